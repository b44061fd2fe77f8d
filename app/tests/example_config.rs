//! `switchboard.example.toml` at the repository root stays in step with
//! `switchboard::config`: it loads, it shows the defaults, and it names every
//! key.

use std::path::PathBuf;

use figment::Figment;
use figment::providers::{Format, Serialized, Toml};
use serde_json::Value;
use switchboard::Config;

fn example_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../switchboard.example.toml")
}

/// The keys set in each `[section]` of the file, commented out or not.
fn keys_by_section(text: &str) -> Vec<(String, Vec<String>)> {
    let mut sections: Vec<(String, Vec<String>)> = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            sections.push((name.to_owned(), Vec::new()));
            continue;
        }
        let setting = line.strip_prefix("# ").unwrap_or(line);
        if let (Some((key, _)), Some((_, keys))) = (setting.split_once(" = "), sections.last_mut())
            && key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        {
            keys.push(key.to_owned());
        }
    }
    sections
}

/// The sample loads (environment aside) into exactly the defaults.
#[test]
fn example_config_loads_as_the_defaults() {
    // Not `Config::load`: a SWITCHBOARD_ variable in the test's environment
    // must not decide this test.
    let figment = Figment::from(Serialized::defaults(Config::default()))
        .merge(Toml::file_exact(example_path()));
    let loaded = Config::from_figment(figment).expect("the example config loads");
    assert_eq!(
        serde_json::to_value(&loaded).unwrap(),
        serde_json::to_value(Config::default()).unwrap()
    );
}

/// Every key of every section appears in the sample, set or commented out.
#[test]
fn example_config_names_every_key() {
    let text = std::fs::read_to_string(example_path()).expect("the example config exists");
    let shown = keys_by_section(&text);
    let Value::Object(sections) = serde_json::to_value(Config::default()).unwrap() else {
        panic!("the configuration serializes to an object");
    };
    for (section, fields) in sections {
        let keys = shown
            .iter()
            .find(|(name, _)| *name == section)
            .map(|(_, keys)| keys)
            .unwrap_or_else(|| panic!("[{section}] is missing from switchboard.example.toml"));
        let Value::Object(fields) = fields else {
            panic!("[{section}] is a table");
        };
        for field in fields.keys() {
            assert!(
                keys.contains(field),
                "{section}.{field} is missing from switchboard.example.toml"
            );
        }
    }
}
