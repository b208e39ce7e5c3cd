//! Test frames, built the way Katran's `PacketBuilder` builds its fixtures:
//! one fluent [`Frame`] for Ethernet (with an optional 802.1Q tag), IPv4 or
//! IPv6, then TCP, UDP, ICMP echo, or an inner IP packet (IP-in-IP, GUE).
//! Headers and checksums come from etherparse, so a frame is what a real
//! stack would send. The packet tests and the bench's per-packet rows build
//! their frames here.
//!
//! ```
//! use lb_tests::frames::Frame;
//! let syn = Frame::eth([2, 0, 0, 0, 0, 0x10], [2, 0, 0, 0, 0, 2])
//!     .ipv4([10, 20, 0, 10], [10, 20, 0, 100])
//!     .tcp_syn(40000, 80)
//!     .build();
//! assert_eq!(syn.len(), 14 + 20 + 20);
//! ```

use etherparse::{IpHeaders, IpNumber, Ipv4Header, PacketBuilder, VlanId};

/// The network layer of a [`Frame`].
#[derive(Clone, Copy, Debug)]
enum Ip {
    V4 { src: [u8; 4], dst: [u8; 4] },
    V6 { src: [u8; 16], dst: [u8; 16] },
}

/// What follows the IP header of a [`Frame`].
#[derive(Clone, Copy, Debug)]
enum L4 {
    /// TCP with SYN (no ACK) or ACK (acknowledgement 1), sequence 1000,
    /// window 65535; `end`: with FIN (`Some(false)`) or RST (`Some(true)`).
    Tcp {
        sport: u16,
        dport: u16,
        syn: bool,
        end: Option<bool>,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    /// ICMP or ICMPv6 echo request (or reply), by the IP family.
    Echo {
        id: u16,
        seq: u16,
        request: bool,
    },
    /// The payload is an IP packet (IP-in-IP: protocol 4 for IPv4 inside,
    /// 41 for IPv6).
    IpInIp,
}

/// A frame to build. Start with [`Frame::eth`], add an IP layer and a
/// transport, then [`Frame::build`].
#[derive(Clone, Debug)]
pub struct Frame {
    src_mac: [u8; 6],
    dst_mac: [u8; 6],
    vlan: Option<u16>,
    ip: Option<Ip>,
    ttl: u8,
    /// IPv4 "don't fragment"; `None`: etherparse's default (set).
    df: Option<bool>,
    l4: Option<L4>,
    payload: Vec<u8>,
    /// Zero payload added so that the frame is this long.
    pad_to: Option<usize>,
}

impl Frame {
    /// An Ethernet II frame from `src_mac` to `dst_mac`.
    pub fn eth(src_mac: [u8; 6], dst_mac: [u8; 6]) -> Self {
        Frame {
            src_mac,
            dst_mac,
            vlan: None,
            ip: None,
            ttl: 64,
            df: None,
            l4: None,
            payload: Vec::new(),
            pad_to: None,
        }
    }

    /// With an 802.1Q tag of VLAN `vid` (1 to 4094).
    pub fn vlan(mut self, vid: u16) -> Self {
        self.vlan = Some(vid);
        self
    }

    /// IPv4 from `src` to `dst` (TTL 64 unless [`Frame::ttl`]).
    pub fn ipv4(mut self, src: [u8; 4], dst: [u8; 4]) -> Self {
        self.ip = Some(Ip::V4 { src, dst });
        self
    }

    /// IPv6 from `src` to `dst` (hop limit 64 unless [`Frame::ttl`]).
    pub fn ipv6(mut self, src: [u8; 16], dst: [u8; 16]) -> Self {
        self.ip = Some(Ip::V6 { src, dst });
        self
    }

    /// TTL (IPv4) or hop limit (IPv6).
    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    /// IPv4 "don't fragment" set or clear (set unless said).
    pub fn df(mut self, df: bool) -> Self {
        self.df = Some(df);
        self
    }

    /// A TCP SYN (no ACK) from `sport` to `dport`.
    pub fn tcp_syn(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = Some(L4::Tcp {
            sport,
            dport,
            syn: true,
            end: None,
        });
        self
    }

    /// A TCP segment of an established connection (ACK) from `sport` to
    /// `dport`.
    pub fn tcp_ack(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = Some(L4::Tcp {
            sport,
            dport,
            syn: false,
            end: None,
        });
        self
    }

    /// A TCP segment that ends a connection, ACK with FIN (`rst` false) or
    /// RST (`rst` true), from `sport` to `dport`.
    pub fn tcp_end(mut self, sport: u16, dport: u16, rst: bool) -> Self {
        self.l4 = Some(L4::Tcp {
            sport,
            dport,
            syn: false,
            end: Some(rst),
        });
        self
    }

    /// A UDP datagram from `sport` to `dport`.
    pub fn udp(mut self, sport: u16, dport: u16) -> Self {
        self.l4 = Some(L4::Udp { sport, dport });
        self
    }

    /// An ICMP (IPv4) or ICMPv6 (IPv6) echo request, or reply when
    /// `request` is false, with identifier `id` and sequence `seq`.
    pub fn echo(mut self, id: u16, seq: u16, request: bool) -> Self {
        self.l4 = Some(L4::Echo { id, seq, request });
        self
    }

    /// The IP packet `inner` as payload (IP-in-IP: protocol 4 or 41 by the
    /// inner packet's version).
    pub fn ip_in_ip(mut self, inner: &[u8]) -> Self {
        self.l4 = Some(L4::IpInIp);
        self.payload = inner.to_vec();
        self
    }

    /// GUE (variant 1: the inner IP packet right after the UDP header) from
    /// UDP port `sport` to `dport`, carrying the IP packet `inner`.
    pub fn gue(mut self, sport: u16, dport: u16, inner: &[u8]) -> Self {
        self.l4 = Some(L4::Udp { sport, dport });
        self.payload = inner.to_vec();
        self
    }

    /// `payload` after the transport header.
    pub fn payload(mut self, payload: &[u8]) -> Self {
        self.payload = payload.to_vec();
        self
    }

    /// Zero bytes of payload added so that the frame is `len` bytes long.
    pub fn padded_to(mut self, len: usize) -> Self {
        self.pad_to = Some(len);
        self
    }

    /// Bytes of headers before the payload.
    fn headers_len(&self) -> usize {
        let ip = match self.ip {
            Some(Ip::V4 { .. }) => 20,
            Some(Ip::V6 { .. }) => 40,
            None => 0,
        };
        let l4 = match self.l4 {
            Some(L4::Tcp { .. }) => 20,
            Some(L4::Udp { .. } | L4::Echo { .. }) => 8,
            Some(L4::IpInIp) | None => 0,
        };
        14 + self.vlan.map_or(0, |_| 4) + ip + l4
    }

    /// The frame's bytes.
    ///
    /// # Panics
    /// No IP layer or transport was given, a VLAN id is out of range, or
    /// the padding is shorter than the headers.
    pub fn build(mut self) -> Vec<u8> {
        if let Some(len) = self.pad_to {
            let want = len
                .checked_sub(self.headers_len())
                .expect("padding shorter than the headers");
            assert!(
                self.payload.len() <= want,
                "payload longer than the padding"
            );
            self.payload.resize(want, 0);
        }
        let ip = self.ip.expect("an IP layer");
        let l4 = self.l4.expect("a transport or an inner packet");
        let eth = PacketBuilder::ethernet2(self.src_mac, self.dst_mac);
        let ip_headers = match ip {
            Ip::V4 { src, dst } => {
                let header = Ipv4Header {
                    source: src,
                    destination: dst,
                    time_to_live: self.ttl,
                    dont_fragment: self.df.unwrap_or(true),
                    ..Default::default()
                };
                IpHeaders::Ipv4(header, Default::default())
            }
            Ip::V6 { src, dst } => IpHeaders::Ipv6(
                etherparse::Ipv6Header {
                    hop_limit: self.ttl,
                    source: src,
                    destination: dst,
                    ..Default::default()
                },
                Default::default(),
            ),
        };
        let step = match self.vlan {
            Some(vid) => eth
                .single_vlan(VlanId::try_new(vid).expect("VLAN id"))
                .ip(ip_headers),
            None => eth.ip(ip_headers),
        };
        let mut frame = Vec::new();
        let payload = &self.payload;
        match l4 {
            L4::Tcp {
                sport,
                dport,
                syn,
                end,
            } => {
                let tcp = step.tcp(sport, dport, 1000, 65535);
                let tcp = if syn { tcp.syn() } else { tcp.ack(1) };
                let tcp = match end {
                    Some(true) => tcp.rst(),
                    Some(false) => tcp.fin(),
                    None => tcp,
                };
                tcp.write(&mut frame, payload)
            }
            L4::Udp { sport, dport } => step.udp(sport, dport).write(&mut frame, payload),
            L4::Echo { id, seq, request } => match (ip, request) {
                (Ip::V4 { .. }, true) => {
                    step.icmpv4_echo_request(id, seq).write(&mut frame, payload)
                }
                (Ip::V4 { .. }, false) => {
                    step.icmpv4_echo_reply(id, seq).write(&mut frame, payload)
                }
                (Ip::V6 { .. }, true) => {
                    step.icmpv6_echo_request(id, seq).write(&mut frame, payload)
                }
                (Ip::V6 { .. }, false) => {
                    step.icmpv6_echo_reply(id, seq).write(&mut frame, payload)
                }
            },
            L4::IpInIp => {
                let proto = if payload.first().is_some_and(|b| b >> 4 == 6) {
                    IpNumber::IPV6
                } else {
                    IpNumber::IPV4
                };
                step.write(&mut frame, proto, payload)
            }
        }
        .expect("etherparse builds the frame");
        frame
    }
}

#[cfg(test)]
mod tests {
    use etherparse::{NetSlice, SlicedPacket, TransportSlice};

    use super::Frame;

    const A: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const B: [u8; 6] = [2, 0, 0, 0, 0, 2];

    #[test]
    fn a_tagged_ipv4_syn_parses_back_with_valid_checksums() {
        let f = Frame::eth(A, B)
            .vlan(7)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .ttl(30)
            .df(true)
            .tcp_syn(1234, 80)
            .build();
        let p = SlicedPacket::from_ethernet(&f).expect("parses");
        let Some(etherparse::VlanSlice::SingleVlan(tag)) = p.vlan else {
            panic!("one 802.1Q tag")
        };
        assert_eq!(tag.vlan_identifier().value(), 7);
        let Some(NetSlice::Ipv4(ip)) = p.net else {
            panic!("IPv4")
        };
        assert_eq!(ip.header().ttl(), 30);
        assert!(ip.header().dont_fragment());
        assert_eq!(
            ip.header().header_checksum(),
            ip.header().to_header().calc_header_checksum()
        );
        let Some(TransportSlice::Tcp(tcp)) = p.transport else {
            panic!("TCP")
        };
        assert!(tcp.syn() && !tcp.ack());
        assert_eq!((tcp.source_port(), tcp.destination_port()), (1234, 80));
    }

    #[test]
    fn padding_makes_the_frame_exactly_that_long_and_ip_in_ip_takes_the_inner_family() {
        let inner = Frame::eth(A, B)
            .ipv6([0xfd; 16], [0xfe; 16])
            .udp(1, 2)
            .padded_to(128)
            .build();
        assert_eq!(inner.len(), 128);
        let outer = Frame::eth(B, A)
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2])
            .ip_in_ip(&inner[14..])
            .build();
        assert_eq!(outer[14 + 9], 41, "IPv6 inside: protocol 41");
        assert_eq!(&outer[14 + 20..], &inner[14..]);
    }
}
