//! The documents agree with the code: docs/reference.md lists every
//! outcome and connection-table event with its index, name and XDP action,
//! and no other; every relative link of README.md and docs/ leads to a file
//! of the repository.

use std::{fs, path::Path};

use lb_common::{ConnEvent, Outcome, xdp_action};

fn repo_file(path: &str) -> String {
    let full = Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path);
    fs::read_to_string(&full).unwrap_or_else(|e| panic!("reading {}: {e}", full.display()))
}

/// The table rows of `doc` under the heading `heading`: each row's cells,
/// without the header and separator rows.
fn table_rows(doc: &str, heading: &str) -> Vec<Vec<String>> {
    let section = doc
        .split("\n## ")
        .find(|s| s.starts_with(heading))
        .unwrap_or_else(|| panic!("no section {heading:?}"));
    section
        .lines()
        .filter(|l| l.starts_with("| "))
        .skip(1)
        .map(|l| {
            l.trim_matches('|')
                .split(" | ")
                .map(|c| c.trim().trim_matches('`').to_string())
                .collect()
        })
        .collect()
}

fn action_name(action: u32) -> &'static str {
    match action {
        xdp_action::DROP => "XDP_DROP",
        xdp_action::PASS => "XDP_PASS",
        xdp_action::TX => "XDP_TX",
        xdp_action::REDIRECT => "XDP_REDIRECT",
        _ => "XDP_ABORTED",
    }
}

#[test]
fn the_reference_lists_every_outcome_with_its_action_and_nothing_else() {
    let doc = repo_file("docs/reference.md");
    let rows = table_rows(&doc, "Outcomes");
    let listed: Vec<(String, String, String)> = rows
        .iter()
        .map(|r| (r[0].clone(), r[1].clone(), r[2].clone()))
        .collect();
    let code: Vec<(String, String, String)> = Outcome::ALL
        .iter()
        .map(|o| {
            (
                (*o as u32).to_string(),
                o.name().to_string(),
                action_name(o.action()).to_string(),
            )
        })
        .collect();
    assert_eq!(
        listed, code,
        "docs/reference.md's outcomes differ from Outcome"
    );
    assert!(
        rows.iter().all(|r| r.len() == 4 && !r[3].is_empty()),
        "every outcome has a meaning"
    );
}

#[test]
fn the_reference_lists_every_connection_table_event_and_nothing_else() {
    let doc = repo_file("docs/reference.md");
    let rows = table_rows(&doc, "Connection-table events");
    let listed: Vec<(String, String)> = rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let code: Vec<(String, String)> = ConnEvent::ALL
        .iter()
        .map(|e| ((*e as u32).to_string(), e.name().to_string()))
        .collect();
    assert_eq!(
        listed, code,
        "docs/reference.md's events differ from ConnEvent"
    );
}

#[test]
fn the_reference_lists_every_nat_event_and_nothing_else() {
    let doc = repo_file("docs/reference.md");
    let rows = table_rows(&doc, "NAT events");
    let listed: Vec<(String, String)> = rows.iter().map(|r| (r[0].clone(), r[1].clone())).collect();
    let code: Vec<(String, String)> = lb_common::NatEvent::ALL
        .iter()
        .map(|e| ((*e as u32).to_string(), e.name().to_string()))
        .collect();
    assert_eq!(
        listed, code,
        "docs/reference.md's NAT events differ from NatEvent"
    );
}

#[test]
fn links_between_documents_lead_to_files_and_nothing_cites_outside_documents() {
    let mut docs = vec!["README.md".to_string()];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs");
    for entry in fs::read_dir(&dir).expect("docs/") {
        let name = entry
            .expect("entry")
            .file_name()
            .into_string()
            .expect("UTF-8 name");
        if name.ends_with(".md") {
            docs.push(format!("docs/{name}"));
        }
    }
    for doc in &docs {
        let text = repo_file(doc);
        let base = Path::new(doc).parent().expect("in the repository");
        for (_, rest) in text.match_indices("](").map(|(i, _)| text.split_at(i + 2)) {
            let target = rest.split(')').next().expect("a link");
            if target.contains("://") || target.starts_with('#') {
                continue;
            }
            let target = target.split('#').next().expect("a path");
            let path = Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("..")
                .join(base)
                .join(target);
            assert!(
                path.exists(),
                "{doc} links to {target}, which does not exist"
            );
        }
        for outside in ["SPEC ", "SPEC.md", "issue "] {
            assert!(
                !text.contains(outside),
                "{doc} cites {outside:?}, a document outside the repository"
            );
        }
    }
}
