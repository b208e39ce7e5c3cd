//! `lb __generate DIR` (packaging only, outside the command line users
//! see, so neither the completions nor the man pages offer it): shell
//! completions for bash, zsh and fish, and one man page per command,
//! generated from the clap definitions of `lb` (clap_complete, clap_mangen),
//! so that they never drift from `--help`. `cargo xtask package` installs
//! them in their Debian places.

use std::{
    ffi::OsString,
    io,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::Context as _;
use clap::Command;
use clap_complete::Shell;

/// The shells completions are generated for, with the file name each one's
/// completion loader looks for (bash-completion: the command's name; zsh:
/// `_` and the name; fish: the name and `.fish`).
pub const SHELLS: [(Shell, &str); 3] = [
    (Shell::Bash, "lb"),
    (Shell::Zsh, "_lb"),
    (Shell::Fish, "lb.fish"),
];

/// The completion script of `cmd` (the `lb` command tree) for `shell`.
pub fn completion(cmd: &Command, shell: Shell) -> Vec<u8> {
    let mut cmd = cmd.clone();
    let name = cmd.get_name().to_string();
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, name, &mut script);
    script
}

/// Man pages (section 1, roff) of `cmd` and of each of its visible
/// subcommands, depth first: (file name such as `lb-run.1`, page).
///
/// # Errors
/// Rendering fails (clap_mangen writes into memory here, so only on a bug).
pub fn man_pages(cmd: &Command) -> io::Result<Vec<(String, Vec<u8>)>> {
    fn walk(cmd: &Command, pages: &mut Vec<(String, Vec<u8>)>) -> io::Result<()> {
        let man = clap_mangen::Man::new(cmd.clone());
        let mut page = Vec::new();
        man.render(&mut page)?;
        pages.push((man.get_filename(), page));
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            walk(sub, pages)?;
        }
        Ok(())
    }
    // Building sets each subcommand's display name (`lb-run`), which names
    // its page; `help` is not a page of its own.
    let mut cmd = cmd.clone().disable_help_subcommand(true);
    cmd.build();
    let mut pages = Vec::new();
    walk(&cmd, &mut pages)?;
    Ok(pages)
}

/// Writes the completions into `out/completions/` (file names as in
/// [`SHELLS`]) and the man pages into `out/man/`; returns the files written.
///
/// # Errors
/// A directory or file cannot be written.
pub fn write(cmd: &Command, out: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    let mut put = |dir: &Path, name: &str, bytes: &[u8]| -> anyhow::Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        let path = dir.join(name);
        std::fs::write(&path, bytes).with_context(|| format!("write {}", path.display()))?;
        written.push(path);
        Ok(())
    };
    let completions = out.join("completions");
    for (shell, name) in SHELLS {
        put(&completions, name, &completion(cmd, shell))?;
    }
    let man = out.join("man");
    for (name, page) in man_pages(cmd).context("render the man pages")? {
        put(&man, &name, &page)?;
    }
    Ok(written)
}

/// The first argument that asks `lb` to generate instead of parsing its
/// command line.
pub const ARG: &str = "__generate";

/// When `args` (the process's, program name first) are `lb __generate DIR`:
/// writes the files of the command tree `cmd()` into `DIR` ([`write`]),
/// prints their paths, and returns the exit code; else `None`, and the
/// command line is parsed as usual. (clap_complete's bash script offers
/// hidden subcommands too, hence this stands outside clap.)
pub fn intercept(
    args: impl IntoIterator<Item = OsString>,
    cmd: impl FnOnce() -> Command,
) -> Option<ExitCode> {
    let mut args = args.into_iter().skip(1);
    if args.next()? != ARG {
        return None;
    }
    let result = match (args.next(), args.next()) {
        (Some(out), None) => write(&cmd(), Path::new(&out)).map(|files| {
            for file in files {
                println!("{}", file.display());
            }
        }),
        _ => Err(anyhow::anyhow!("usage: lb {ARG} DIR")),
    };
    Some(super::report(result))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn toy() -> Command {
        Command::new("lb")
            .about("toy")
            .subcommand(
                Command::new("run")
                    .about("runs")
                    .arg(clap::arg!(--config <FILE>)),
            )
            .subcommand(Command::new("secret").hide(true))
    }

    #[test]
    fn hidden_commands_get_no_page() {
        let names: Vec<String> = man_pages(&toy())
            .expect("pages")
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        assert_eq!(names, ["lb.1", "lb-run.1"]);
    }

    #[test]
    fn completions_offer_commands_and_flags() {
        for (shell, _) in SHELLS {
            let script = String::from_utf8(completion(&toy(), shell)).expect("UTF-8");
            assert!(script.contains("run"), "{shell}: {script}");
            assert!(script.contains("config"), "{shell}: {script}");
        }
    }

    #[test]
    fn only_the_generate_argument_is_intercepted() {
        let args = |a: &[&str]| a.iter().map(OsString::from).collect::<Vec<_>>();
        assert!(intercept(args(&["lb", "run", "--config", "x"]), toy).is_none());
        assert!(intercept(args(&["lb"]), toy).is_none());
        // A usage error is an answer (exit 1), not a fall-through to clap.
        assert!(intercept(args(&["lb", ARG]), toy).is_some());
        let out = std::env::temp_dir().join(format!("lb-intercept-{}", std::process::id()));
        let code = intercept(args(&["lb", ARG, &out.display().to_string()]), toy);
        let written = out.join("man/lb-run.1").is_file();
        let _ = std::fs::remove_dir_all(&out);
        assert!(code.is_some());
        assert!(written);
    }

    #[test]
    fn write_puts_files_where_packaging_expects_them() {
        let out = std::env::temp_dir().join(format!("lb-generate-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let written = write(&toy(), &out).expect("write");
        let mut rel: Vec<String> = written
            .iter()
            .map(|p| {
                p.strip_prefix(&out)
                    .expect("under out")
                    .display()
                    .to_string()
            })
            .collect();
        rel.sort();
        let all_present = written.iter().all(|p| p.is_file());
        let _ = std::fs::remove_dir_all(&out);
        assert!(all_present);
        assert_eq!(
            rel,
            [
                "completions/_lb",
                "completions/lb",
                "completions/lb.fish",
                "man/lb-run.1",
                "man/lb.1"
            ]
        );
    }
}
