//! Alert and recording rules in the Prometheus rule-file format, evaluated on this node every
//! tick: load and validate ([`file`], [`promql::subset`], [`template`]), evaluate
//! ([`promql`]) over the store's short history of the node's own series (`store::history`),
//! move alerts ([`alerting`]), run groups ([`engine`]) for the agent ([`live`], [`reload`])
//! and for rule unit tests ([`unittest`]).

pub mod alerting;
pub mod engine;
pub mod file;
pub mod live;
pub mod promql;
pub mod reload;
pub mod template;
pub mod unittest;

use std::path::{Path, PathBuf};

use file::GroupDef;

use crate::config::Config;
pub use crate::yaml::Error as RuleError;

/// The default rules, embedded in the binary.
pub const DEFAULT_RULES: &str = include_str!("../../../alerts/default.yaml");

/// How the embedded rules are named in errors and group identities.
pub const DEFAULT_RULES_NAME: &str = "<embedded alerts/default.yaml>";

/// The embedded default rules.
pub fn default_rules() -> Vec<GroupDef> {
    file::parse(DEFAULT_RULES_NAME, DEFAULT_RULES)
        .expect("the embedded rules are checked by a unit test")
}

/// The rule files a config names: its patterns resolved against the config file's folder and
/// expanded. A pattern with glob characters may match nothing (a WARN line); a plain path
/// must exist.
pub fn resolve_files(
    cfg: &Config,
    config_path: Option<&Path>,
) -> Result<Vec<PathBuf>, Vec<RuleError>> {
    let base = config_path
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let mut files = Vec::new();
    let mut errors = Vec::new();
    for pattern in &cfg.rule_files {
        let full = if Path::new(pattern).is_absolute() {
            PathBuf::from(pattern)
        } else {
            base.join(pattern)
        };
        let text = full.display().to_string();
        if !pattern.contains(['*', '?', '[']) {
            files.push(full);
            continue;
        }
        match glob::glob(&text) {
            Ok(paths) => {
                let mut matched: Vec<PathBuf> = paths.filter_map(Result::ok).collect();
                if matched.is_empty() {
                    tracing::warn!(pattern = %text, "rule_files pattern matches no file");
                }
                matched.sort();
                files.extend(matched);
            }
            Err(e) => errors.push(RuleError::Invalid {
                file: config_path.map_or("<config>".into(), |p| p.display().to_string()),
                line: 1,
                column: 1,
                message: format!("rule_files: bad pattern {pattern:?}: {e}"),
            }),
        }
    }
    if errors.is_empty() {
        Ok(files)
    } else {
        Err(errors)
    }
}

/// Every rule the config asks for: the embedded defaults (unless switched off) and the rule
/// files, all validated; every problem of every file is returned.
pub fn load_for_config(
    cfg: &Config,
    config_path: Option<&Path>,
) -> Result<Vec<GroupDef>, Vec<RuleError>> {
    let mut groups = if cfg.default_rules {
        default_rules()
    } else {
        Vec::new()
    };
    let mut errors = Vec::new();
    for f in resolve_files(cfg, config_path)? {
        if let Err(e) = crate::yaml::refuse_world_writable(&f) {
            errors.push(e);
            continue;
        }
        match file::load(&f) {
            Ok(g) => groups.extend(g),
            Err(e) => errors.extend(e),
        }
    }
    if errors.is_empty() {
        Ok(groups)
    } else {
        Err(errors)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn embedded_rules_are_valid() {
        let groups = file::parse(DEFAULT_RULES_NAME, DEFAULT_RULES).unwrap_or_else(|e| {
            panic!(
                "{}",
                e.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
        assert!(groups.iter().map(|g| g.rules.len()).sum::<usize>() >= 10);
    }
}
