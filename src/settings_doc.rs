//! The table of every setting, generated from the clap definitions, so the
//! flags, `docs/CONFIGURATION.md` and `.env.example` cannot drift apart: a
//! test compares them (`SVC_BLESS=1 cargo test settings` rewrites the doc's
//! table).

use std::collections::BTreeMap;

use clap::CommandFactory;

use crate::cli::Cli;

/// One environment variable: which commands read it, its default, and what
/// it means (the flag's own help text).
struct Setting {
    used_by: Vec<String>,
    default: String,
    meaning: String,
}

/// The Markdown table of every variable behind a flag, plus `RUST_LOG`.
pub fn markdown_table() -> String {
    let mut cli = Cli::command();
    // Global flags reach the subcommands only once the command is built.
    cli.build();
    let mut settings: BTreeMap<String, Setting> = BTreeMap::new();
    for command in cli.get_subcommands() {
        for arg in command.get_arguments() {
            let Some(env) = arg.get_env() else { continue };
            let env = env.to_string_lossy().into_owned();
            let setting = settings.entry(env).or_insert_with(|| Setting {
                used_by: Vec::new(),
                default: default_of(arg),
                meaning: meaning_of(arg),
            });
            if arg.is_global_set() {
                setting.used_by = vec!["all".into()];
            } else {
                setting.used_by.push(command.get_name().to_owned());
            }
        }
    }
    let mut rows: Vec<(String, Setting)> = settings.into_iter().collect();
    // Connections first, as an operator sets them; then by name.
    rows.sort_by_key(|(name, _)| (name.starts_with("SVC_"), name.clone()));
    rows.push((
        "RUST_LOG".into(),
        Setting {
            used_by: vec!["all".into()],
            default: "`info`".into(),
            meaning: "Log filter, as `tracing-subscriber`'s `EnvFilter` reads it".into(),
        },
    ));
    let mut table =
        String::from("| variable | used by | default | meaning |\n| --- | --- | --- | --- |\n");
    for (name, setting) in rows {
        table.push_str(&format!(
            "| `{name}` | {} | {} | {} |\n",
            setting.used_by.join(", "),
            setting.default,
            setting.meaning
        ));
    }
    table
}

fn default_of(arg: &clap::Arg) -> String {
    let defaults: Vec<String> = arg
        .get_default_values()
        .iter()
        .map(|value| value.to_string_lossy().into_owned())
        .collect();
    if !defaults.is_empty() {
        format!("`{}`", defaults.join(","))
    } else if arg.is_required_set() {
        "required".into()
    } else {
        "unset".into()
    }
}

/// The flag's help as one line, without a closing full stop.
fn meaning_of(arg: &clap::Arg) -> String {
    let help = arg
        .get_long_help()
        .or_else(|| arg.get_help())
        .map(|help| help.to_string())
        .unwrap_or_default();
    let line = help.split_whitespace().collect::<Vec<_>>().join(" ");
    line.trim_end_matches('.').replace('|', "\\|")
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const BEGIN: &str =
        "<!-- settings: generated from the clap definitions by src/settings_doc.rs -->\n";
    const END: &str = "<!-- settings: end -->";

    fn repository_file(name: &str) -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join(name)
    }

    #[test]
    fn the_settings_doc_is_the_table_the_flags_make() {
        let path = repository_file("docs/CONFIGURATION.md");
        let doc = std::fs::read_to_string(&path).unwrap();
        let start = doc.find(BEGIN).expect("the doc has the begin marker") + BEGIN.len();
        let end = doc.find(END).expect("the doc has the end marker");
        let table = markdown_table();
        if doc[start..end] != table {
            if std::env::var_os("SVC_BLESS").is_some() {
                std::fs::write(&path, format!("{}{table}{}", &doc[..start], &doc[end..])).unwrap();
            } else {
                panic!(
                    "docs/CONFIGURATION.md is out of date with the flags; run `SVC_BLESS=1 cargo test settings` and review the diff.\nExpected:\n{table}"
                );
            }
        }
    }

    #[test]
    fn env_example_names_every_setting_and_nothing_else() {
        let example = std::fs::read_to_string(repository_file(".env.example")).unwrap();
        let named: BTreeMap<&str, &str> = example
            .lines()
            .filter_map(|line| line.trim_start_matches('#').split_once('='))
            .filter(|(name, _)| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_uppercase() || c == '_')
            })
            .collect();
        let table = markdown_table();
        // Each row: `NAME` | used by | default (in backticks when it has one) | meaning.
        let documented: BTreeMap<&str, &str> = table
            .lines()
            .skip(2)
            .filter_map(|row| {
                let cells: Vec<&str> = row.split(" | ").collect();
                Some((cells[0].split('`').nth(1)?, cells[2]))
            })
            .collect();
        for (name, default) in &documented {
            let example = named
                .get(name)
                .unwrap_or_else(|| panic!(".env.example lacks {name}"));
            if let Some(default) = default.strip_prefix('`').and_then(|d| d.strip_suffix('`')) {
                assert_eq!(
                    example, &default,
                    ".env.example shows {name} other than its default"
                );
            }
        }
        for name in named.keys() {
            assert!(
                documented.contains_key(name),
                ".env.example names {name}, which no flag reads"
            );
        }
    }
}
