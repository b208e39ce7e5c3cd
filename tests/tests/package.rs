//! The Debian package (`cargo xtask package`, whose path `cargo xtask test`
//! passes in `$LB_DEB`): it installs with `dpkg -i` on this machine, `lb
//! --version` and `lb check` on the packaged example work, the installed
//! units verify, the completions load, and `dpkg -r` then `dpkg --purge`
//! leave none of its files. The package is purged even when the test fails.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
};

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{program}: {e}"))
}

fn ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn installed() -> bool {
    run("dpkg-query", &["-W", "-f=${Status}", "lb"])
        .stdout
        .starts_with(b"install ok")
}

/// Purges the package on drop, whatever happened.
struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = run("dpkg", &["--purge", "lb"]);
    }
}

#[test]
#[ignore = "needs root: cargo xtask test"]
fn the_package_installs_works_and_uninstalls_cleanly() {
    lb_tests::require_root();
    let Some(deb) = std::env::var_os("LB_DEB").map(PathBuf::from) else {
        println!("skipped: set LB_DEB to the package (`cargo xtask test` builds it and does)");
        return;
    };
    // Never clobber an installation or a configuration this test did not make.
    assert!(
        !installed(),
        "the package lb is installed on this machine: the test would replace and purge it"
    );
    assert!(
        !Path::new("/etc/lb").exists(),
        "/etc/lb exists: the test would install its example over it"
    );

    let contents = ok("dpkg-deb", &["-c", &deb.display().to_string()]);
    let _purge = Installed;
    ok("dpkg", &["-i", &deb.display().to_string()]);
    assert!(installed());

    // Its files, where Debian keeps them.
    let files: BTreeSet<String> = ok("dpkg", &["-L", "lb"])
        .lines()
        .filter(|l| Path::new(l).is_file())
        .map(str::to_string)
        .collect();
    let mut expected = vec![
        "/usr/bin/lb".to_string(),
        "/etc/lb/lb.toml".into(),
        "/usr/lib/systemd/system/lb.service".into(),
        "/usr/lib/systemd/system/lb-decap@.service".into(),
        "/usr/share/bash-completion/completions/lb".into(),
        "/usr/share/zsh/vendor-completions/_lb".into(),
        "/usr/share/fish/vendor_completions.d/lb.fish".into(),
        "/usr/share/man/man1/lb.1.gz".into(),
        "/usr/share/lb/grafana/lb-dashboard.json".into(),
    ];
    for command in ["run", "check", "status", "explain", "decap", "detach"] {
        expected.push(format!("/usr/share/man/man1/lb-{command}.1.gz"));
    }
    for path in &expected {
        assert!(
            files.contains(path),
            "{path} not installed: {files:?}\n{contents}"
        );
    }
    assert!(
        ok("dpkg-query", &["-W", "-f=${Conffiles}", "lb"]).contains("/etc/lb/lb.toml"),
        "the example configuration is a conffile"
    );

    // The installed lb runs, and accepts the packaged example.
    let version = ok("/usr/bin/lb", &["--version"]);
    assert!(version.starts_with("lb "), "{version}");
    let check = ok("/usr/bin/lb", &["check", "--config", "/etc/lb/lb.toml"]);
    assert!(check.contains("OK: 1 VIPs, 2 backends"), "{check}");

    // The installed units verify as they are (their /usr/bin/lb exists now).
    ok(
        "systemd-analyze",
        &[
            "verify",
            "--man=no",
            "/usr/lib/systemd/system/lb.service",
            "/usr/lib/systemd/system/lb-decap@.service",
        ],
    );
    // The man pages they name are found.
    let man = run("man", &["-w", "lb-detach"]);
    if man.status.code() != Some(127) && Path::new("/usr/bin/man").exists() {
        assert!(
            String::from_utf8_lossy(&man.stdout).contains("/usr/share/man/man1/lb-detach.1.gz"),
            "{}",
            String::from_utf8_lossy(&man.stderr)
        );
    }
    // Bash loads the completion and completes the commands.
    let completion = ok(
        "bash",
        &[
            "-c",
            "source /usr/share/bash-completion/completions/lb && complete -p lb && COMP_WORDS=(lb de) COMP_CWORD=1 && _lb lb de lb && echo \"${COMPREPLY[*]}\"",
        ],
    );
    assert!(completion.contains("-F _lb"), "{completion}");
    assert!(
        completion.contains("decap") && completion.contains("detach"),
        "{completion}"
    );

    // Removal leaves only the conffile; purge removes it too.
    ok("dpkg", &["-r", "lb"]);
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert_eq!(left, [&"/etc/lb/lb.toml".to_string()], "left after dpkg -r");
    ok("dpkg", &["--purge", "lb"]);
    assert!(!installed());
    let left: Vec<&String> = files.iter().filter(|f| Path::new(f).exists()).collect();
    assert!(left.is_empty(), "left after purge: {left:?}");
    assert!(!Path::new("/etc/lb").exists(), "/etc/lb left after purge");
    // Nor any state of dpkg's or deb-systemd-helper's about it.
    for dir in [
        "/var/lib/dpkg/info",
        "/var/lib/systemd/deb-systemd-helper-enabled",
        "/var/lib/systemd/deb-systemd-helper-masked",
    ] {
        let left: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("lb.") || name.starts_with("lb-decap@"))
            .collect();
        assert!(left.is_empty(), "left in {dir}: {left:?}");
    }
}
