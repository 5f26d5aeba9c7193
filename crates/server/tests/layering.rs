//! The crate's layering, checked on its sources: the shared layers (transport, connection
//! runtime, sessions, shared state, configuration, broker) name no wire protocol, and no
//! protocol names another. A protocol is then one folder under `src/protocol/` plus its
//! registration in `server.rs`, and can be added or removed without touching the rest.
use std::fs;
use std::path::{Path, PathBuf};

fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source lines that are code (comments dropped), for matching module paths.
fn code(path: &Path) -> String {
    fs::read_to_string(path)
        .unwrap()
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

fn protocols() -> Vec<String> {
    fs::read_dir(src().join("protocol"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            e.file_type()
                .unwrap()
                .is_dir()
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

#[test]
fn shared_layers_name_no_protocol() {
    let root = src();
    let mut files = Vec::new();
    for dir in ["transport", "conn", "broker", "webhooks"] {
        sources(&root.join(dir), &mut files);
    }
    for file in [
        "sessions.rs",
        "state.rs",
        "config.rs",
        "memory.rs",
        "auth.rs",
    ] {
        files.push(root.join(file));
    }
    assert!(files.len() > 10, "the layers were found: {files:?}");
    let mut offenders = Vec::new();
    for file in &files {
        let text = code(file);
        if text.contains("crate::protocol") || text.contains("crate::api") {
            offenders.push(file.strip_prefix(&root).unwrap().display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "these shared modules import a protocol (or the API): {offenders:?}"
    );
}

#[test]
fn no_protocol_imports_another() {
    let root = src();
    let names = protocols();
    assert!(
        ["raw", "centrifugo", "socketio"]
            .iter()
            .all(|p| names.iter().any(|n| n == p)),
        "the protocol folders were found: {names:?}"
    );
    let mut offenders = Vec::new();
    for name in &names {
        let mut files = Vec::new();
        sources(&root.join("protocol").join(name), &mut files);
        for file in files {
            let text = code(&file);
            for other in names.iter().filter(|o| *o != name) {
                if text.contains(&format!("protocol::{other}"))
                    || text.contains(&format!("super::super::{other}"))
                {
                    offenders.push(format!("{} → {other}", file.display()));
                }
            }
        }
    }
    assert!(
        offenders.is_empty(),
        "protocols import each other: {offenders:?}"
    );
}

#[test]
fn every_protocol_is_registered_in_the_composition_root_only() {
    let root = src();
    let server = code(&root.join("server.rs"));
    for name in protocols() {
        assert!(
            server.contains(&format!("protocol::{name}")),
            "protocol {name} is not registered in server.rs"
        );
    }
    let router = code(&root.join("transport").join("mod.rs"));
    for name in protocols() {
        assert!(!router.contains(&name), "the router names protocol {name}");
    }
}
