//! What `/status` (and so `lb status` and `/metrics`) shows of the BGP
//! announcement: the speaker, each peer's session, and each VIP address
//! with whether it is announced and why (not).

use serde::{Deserialize, Serialize};

/// The BGP part of `/status`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct BgpStatus {
    /// `starting` (no answer from BIRD yet), `running` (its last `show
    /// protocols` answered), `not answering` (BIRD runs but its last
    /// command failed), `down` (not running; see `last_error`) or
    /// `stopped`.
    pub speaker: String,
    /// BIRD's pid while it runs.
    pub pid: Option<u32>,
    /// Times the agent started BIRD again after it died.
    pub restarts: u64,
    /// Commands to BIRD that failed, and lines of its answers that could
    /// not be read.
    pub errors: u64,
    /// The last such error.
    pub last_error: Option<String>,
    /// The peers, in configuration order.
    pub peers: Vec<PeerStatus>,
    /// Every VIP address.
    pub addresses: Vec<AddressStatus>,
}

/// One peer's session.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct PeerStatus {
    /// The router's address.
    pub address: String,
    /// Its AS.
    pub remote_as: u32,
    /// BGP state (RFC 4271 section 8.2.2): `Established`, `Active`, ...;
    /// `unknown` before BIRD answered.
    pub state: String,
    /// Seconds since the session was established, while it is.
    pub uptime_seconds: Option<f64>,
    /// Routes exported to it (VIP addresses it was sent).
    pub exported_routes: Option<u64>,
    /// BIRD's last error for the session.
    pub last_error: Option<String>,
}

impl PeerStatus {
    /// Whether the session is established.
    pub fn established(&self) -> bool {
        self.state == "Established"
    }
}

/// One VIP address.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct AddressStatus {
    /// The address.
    pub address: String,
    /// Whether the announcement rule wants it announced.
    pub wanted: bool,
    /// Whether it is announced: BIRD holds it (read back from BIRD) and a
    /// session with a peer of its family is established.
    pub announced: bool,
    /// The rule's reason, per VIP on the address.
    pub reason: String,
}
