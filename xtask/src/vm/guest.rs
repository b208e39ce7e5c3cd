//! What the guest runs: the test script between `LB-VM:` markers, and the
//! busybox initramfs (its `/init`, the modules, a newc cpio archive) that
//! mounts the host's `/` and runs it.

use super::*;

/// The shell script the guest runs in the host's file system: each step
/// between `LB-VM: begin` and `LB-VM: end NAME exit=N` markers, then a
/// result marker.
pub(super) fn guest_script(root: &Path, target: &Path, tests: &HashMap<String, PathBuf>) -> String {
    let mut script = format!(
        "cd '{}'\nexport PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LB_BIN='{}'\n",
        root.display(),
        lb_binary(target).display()
    );
    script.push_str("echo \"LB-VM: kernel $(uname -r)\"\nfailed=0\n");
    for (name, target, args) in STEPS {
        let exe = &tests[*target];
        script.push_str(&format!(
            "echo 'LB-VM: begin {name}'\n'{}' --color=never --include-ignored {}\nrc=$?\necho \"LB-VM: end {name} exit=$rc\"\n[ $rc -eq 0 ] || failed=1\n",
            exe.display(),
            args.join(" ")
        ));
    }
    script.push_str(
        "if [ $failed -eq 0 ]; then echo 'LB-VM: RESULT PASS'; else echo 'LB-VM: RESULT FAIL'; fi\nexit $failed\n",
    );
    script
}

/// /init: mounts the host's root (9p, read-only) under a tmpfs overlay,
/// gives it fresh proc, sys, dev, bpffs, /run and /tmp, runs the script in
/// it, then powers off. Every failure ends in `LB-VM: RESULT FAIL`.
const INIT: &str = r#"#!/bin/busybox sh
# A fresh line after the firmware's escape sequences.
echo
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs devtmpfs /dev
mount -t proc proc /proc
mount -t sysfs sysfs /sys
fail() { echo "LB-VM: RESULT FAIL ($1)"; poweroff -f; }
for m in $(cat /modules); do insmod "/lib/modules/$m" || fail "insmod $m"; done
mkdir -p /host /rw /newroot
mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=262144,cache=loose hostroot /host || fail "9p mount"
mount -t tmpfs tmpfs /rw
mkdir -p /rw/upper /rw/work
mount -t overlay overlay -o lowerdir=/host,upperdir=/rw/upper,workdir=/rw/work /newroot || fail "overlay"
cd /newroot
mount -t proc proc proc
mount -t sysfs sysfs sys
mount -t bpf bpf sys/fs/bpf
mount -t devtmpfs devtmpfs dev
mkdir -p dev/shm dev/pts
mount -t tmpfs tmpfs dev/shm
mount -t devpts devpts dev/pts
mount -t tmpfs tmpfs run
mount -t tmpfs tmpfs tmp
cp /guest.sh run/lb-guest.sh
chroot /newroot /bin/sh /run/lb-guest.sh
echo "LB-VM: guest script exit=$?"
sync
poweroff -f
"#;

/// Writes the initramfs (cpio newc, gzip) with busybox, the modules, /init
/// and the guest script; returns its path.
pub(super) fn initramfs(dir: &Path, kernel: &Kernel, script: &str) -> anyhow::Result<PathBuf> {
    let modules = module_files(&kernel.modules, MODULES)?;
    let mut cpio = Cpio::default();
    for d in [
        "bin",
        "dev",
        "proc",
        "sys",
        "lib",
        "lib/modules",
        "host",
        "rw",
        "newroot",
    ] {
        cpio.entry(d, 0o040_755, &[]);
    }
    cpio.device("dev/console", 0o020_600, (5, 1));
    cpio.entry("bin/busybox", 0o100_755, &fs::read("/bin/busybox")?);
    cpio.entry("init", 0o100_755, INIT.as_bytes());
    cpio.entry("guest.sh", 0o100_644, script.as_bytes());
    let mut list = String::new();
    for ko in &modules {
        let name = file_name(ko);
        cpio.entry(&format!("lib/modules/{name}"), 0o100_644, &fs::read(ko)?);
        list.push_str(&name);
        list.push('\n');
    }
    cpio.entry("modules", 0o100_644, list.as_bytes());
    let path = dir.join("initramfs.cpio.gz");
    let mut gzip = Command::new("gzip")
        .arg("-c")
        .stdin(Stdio::piped())
        .stdout(fs::File::create(&path)?)
        .spawn()
        .context("gzip")?;
    gzip.stdin
        .take()
        .context("gzip stdin")?
        .write_all(&cpio.finish())?;
    ensure!(gzip.wait()?.success(), "gzip failed");
    Ok(path)
}

/// A cpio archive in the "newc" format the kernel unpacks
/// (Documentation/driver-api/early-userspace/buffer-format.rst).
#[derive(Default)]
struct Cpio {
    data: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, content: &[u8]) {
        self.header(name, mode, content.len(), (0, 0));
        self.data.extend_from_slice(content);
        self.pad();
    }

    fn device(&mut self, name: &str, mode: u32, (major, minor): (u32, u32)) {
        self.header(name, mode, 0, (major, minor));
    }

    fn header(&mut self, name: &str, mode: u32, size: usize, (major, minor): (u32, u32)) {
        self.ino += 1;
        let nlink = if mode & 0o040_000 != 0 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0,
            0,
            nlink,
            0,
            u32::try_from(size).expect("initramfs files are small"),
            0,
            0,
            major,
            minor,
            u32::try_from(name.len() + 1).expect("short name"),
            0,
        ];
        self.data.extend_from_slice(b"070701");
        for f in fields {
            self.data.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.data.extend_from_slice(name.as_bytes());
        self.data.push(0);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.data.len().is_multiple_of(4) {
            self.data.push(0);
        }
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[]);
        self.data
    }
}
