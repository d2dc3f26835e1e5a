//! The README's configuration reference lists exactly the keys the code accepts. The code's
//! keys are read from the real binary: a config with an unknown key at some level is refused
//! with serde's list of the keys that level expects.

mod common;

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use common::{BIN, TempDir};

const README: &str = include_str!("../README.md");

/// Key names per level of the reference block; a level is the path of its parent keys, with
/// `[]` for the entries of a list.
fn readme_keys() -> BTreeMap<Vec<String>, BTreeSet<String>> {
    let block = README
        .split("<!-- config-reference:start -->")
        .nth(1)
        .and_then(|b| b.split("<!-- config-reference:end -->").next())
        .expect("README has the config reference block");
    let mut levels: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    // (indent, path of the mapping at that indent)
    let mut stack: Vec<(usize, Vec<String>)> = vec![(0, vec![])];
    for line in block.lines().filter(|l| !l.starts_with("```")) {
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            continue;
        }
        let mut indent = line.len() - content.len();
        let (content, list_entry) = match content.strip_prefix("- ") {
            Some(rest) => {
                indent += 2;
                (rest, true)
            }
            None => (content, false),
        };
        let Some((key, value)) = content.split_once(':') else {
            continue;
        };
        if !key.chars().all(|c| c.is_ascii_lowercase() || c == '_') {
            continue;
        }
        while stack.last().is_some_and(|(i, _)| *i > indent) {
            stack.pop();
        }
        if list_entry {
            let parent = stack.last().unwrap().1.clone();
            let mut path = parent;
            path.push("[]".into());
            stack.push((indent, path));
        }
        let here = stack.last().unwrap().1.clone();
        levels
            .entry(here.clone())
            .or_default()
            .insert(key.to_string());
        let value = value.split('#').next().unwrap().trim();
        if value.is_empty() {
            let mut child = here;
            child.push(key.to_string());
            stack.push((indent + 2, child));
        }
    }
    levels
}

/// The keys the binary accepts at `path`, from its error for an unknown key there.
fn code_keys(dir: &TempDir, path: &[String]) -> BTreeSet<String> {
    let mut yaml = String::new();
    let mut indent = 0;
    for part in path {
        if part == "[]" {
            yaml.push_str(&format!("{}- ", " ".repeat(indent)));
            indent += 2;
            continue;
        }
        let pad = if yaml.ends_with("- ") { 0 } else { indent };
        yaml.push_str(&format!("{}{part}:\n", " ".repeat(pad)));
        indent += 2;
    }
    let pad = if yaml.ends_with("- ") { 0 } else { indent };
    yaml.push_str(&format!("{}zz_not_a_key: 1\n", " ".repeat(pad)));
    let file = dir.write("probe.yaml", &yaml);
    let out = Command::new(BIN)
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    let expected = err
        .split("expected ")
        .nth(1)
        .unwrap_or_else(|| panic!("no key list for {path:?}:\n{yaml}\n{err}"));
    let list = expected.trim().trim_start_matches("one of ");
    list.split([',', ' '])
        .map(|k| k.trim_matches('`'))
        .filter(|k| !k.is_empty() && *k != "or")
        .map(str::to_string)
        .collect()
}

#[test]
fn readme_config_reference_lists_exactly_the_codes_keys() {
    let dir = TempDir::new("readme-keys");
    let levels = readme_keys();
    assert!(levels.len() >= 6, "{levels:?}");
    for (path, documented) in &levels {
        let accepted = code_keys(&dir, path);
        assert_eq!(
            documented,
            &accepted,
            "README keys under `{}` differ from the code's",
            path.join(".")
        );
    }
}
