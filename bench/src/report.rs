//! The bench's one table, printed and written as markdown.

use std::{fmt::Write as _, path::Path};

/// One row of the table.
pub struct Row {
    /// Which measurement (per-packet, Maglev, veth, HTTP).
    pub section: &'static str,
    /// What was measured.
    pub case: String,
    /// The figure with its unit.
    pub value: String,
    /// Against the baseline of its section, when it has one.
    pub ratio: String,
    /// How it was measured or checked; "noisy" where it is.
    pub note: String,
}

/// The machine, the rows and the closing notes.
#[derive(Default)]
pub struct Report {
    /// Lines about the machine, printed first.
    pub machine: Vec<String>,
    /// The table.
    pub rows: Vec<Row>,
    /// Notes after the table (noise, what is not comparable).
    pub notes: Vec<String>,
}

impl Report {
    /// Adds a row.
    pub fn row(
        &mut self,
        section: &'static str,
        case: impl Into<String>,
        value: impl Into<String>,
        ratio: impl Into<String>,
        note: impl Into<String>,
    ) {
        let row = Row {
            section,
            case: case.into(),
            value: value.into(),
            ratio: ratio.into(),
            note: note.into(),
        };
        println!(
            "  {:<9} {:<44} {:>16} {:>8}  {}",
            row.section, row.case, row.value, row.ratio, row.note
        );
        self.rows.push(row);
    }

    /// The report as markdown.
    pub fn markdown(&self) -> String {
        let mut s = String::from("# lb benchmark\n\n");
        for line in &self.machine {
            let _ = writeln!(s, "- {line}");
        }
        s.push_str("\n| section | case | result | ratio | notes |\n|---|---|---:|---:|---|\n");
        for r in &self.rows {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} |",
                r.section,
                r.case,
                r.value,
                r.ratio,
                r.note.replace('|', "/")
            );
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        s
    }

    /// Writes the markdown to `path`, creating its directory.
    ///
    /// # Errors
    /// The directory or the file cannot be written.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(path, self.markdown())
    }
}

/// The machine: cores, CPU model, kernel, load at start.
pub fn machine() -> Vec<String> {
    let cores = std::thread::available_parallelism().map_or(0, std::num::NonZero::get);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .unwrap_or_default()
        .trim()
        .to_string();
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    vec![
        format!("machine: {cores} cores ({model}), kernel {kernel}"),
        format!("load average at start: {load}"),
    ]
}
