//! The command line: one binary, a subcommand per role.
//!
//! [`parse`] turns clap's multi-line errors about settings into the single
//! line operators expect, naming the environment variable behind the flag,
//! with exit code 2.

use std::{error::Error as _, ffi::OsString};

use clap::{
    CommandFactory, Parser, Subcommand,
    error::{ContextKind, ContextValue, ErrorKind},
};

use crate::config::{ConsumeArgs, LogArgs, MigrateArgs, ServeArgs};

/// Accept writes asynchronously, serve reads from cache.
#[derive(Debug, Parser)]
#[command(name = "svc", version, about, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTP API.
    Serve(ServeArgs),
    /// Run a queue consumer that persists accepted writes (run any number).
    Consume(ConsumeArgs),
    /// Apply the Postgres migrations and declare the RabbitMQ topology.
    Migrate(MigrateArgs),
    /// Load-test an svc API and judge it: SLO, degradation, windows, errors,
    /// durability, regression. Exit code 0 when every gate holds, 1 when one
    /// fails, 2 when it could not run (or was interrupted), 3 when a gate
    /// had too few samples to decide.
    #[cfg(feature = "loadtest")]
    Loadtest(svc_loadtest::LoadtestArgs),
}

/// Why the command line could not be used, and what to do about it.
#[derive(Debug, PartialEq, Eq)]
pub enum CliExit {
    /// Help or version was asked for: print it as is, exit 0.
    Info(String),
    /// A usage or settings error: print this one line, exit 2.
    Invalid(String),
}

/// Parses the arguments (the environment supplies whatever flags are absent).
pub fn parse<I, T>(args: I) -> Result<Cli, CliExit>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    Cli::try_parse_from(args).map_err(|err| match err.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => CliExit::Info(err.to_string()),
        _ => CliExit::Invalid(one_line(&err)),
    })
}

fn one_line(err: &clap::Error) -> String {
    let flags: Vec<String> = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(flag)) => vec![flag.clone()],
        Some(ContextValue::Strings(flags)) => flags.clone(),
        _ => Vec::new(),
    };
    let names: Vec<String> = flags.iter().map(|flag| setting_name(flag)).collect();
    match err.kind() {
        ErrorKind::MissingRequiredArgument if !names.is_empty() => format!(
            "svc: missing required setting {} (set it in the environment or .env)",
            names.join(", ")
        ),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue if !names.is_empty() => {
            // The reason comes from our own value parsers, which never echo the
            // value itself: it may hold a password.
            let reason = err
                .source()
                .map(|source| source.to_string())
                .unwrap_or_else(|| match err.get(ContextKind::ValidValue) {
                    Some(ContextValue::Strings(valid)) => {
                        format!("expected one of {}", valid.join(", "))
                    }
                    _ => "invalid value".into(),
                });
            format!("svc: invalid setting {}: {reason}", names[0])
        }
        _ => {
            let rendered = err.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid command line");
            let first = first.strip_prefix("error: ").unwrap_or(first);
            format!("svc: {first} (see `svc --help`)")
        }
    }
}

/// `--database-url <DATABASE_URL>` → `DATABASE_URL (--database-url)`.
fn setting_name(flag: &str) -> String {
    let long = flag
        .split_whitespace()
        .next()
        .unwrap_or(flag)
        .trim_start_matches('-');
    match env_of(&Cli::command(), long) {
        Some(env) => format!("{env} (--{long})"),
        None => format!("--{long}"),
    }
}

fn env_of(command: &clap::Command, long: &str) -> Option<String> {
    command
        .get_arguments()
        .find(|arg| arg.get_long() == Some(long))
        .and_then(|arg| arg.get_env())
        .map(|env| env.to_string_lossy().into_owned())
        .or_else(|| command.get_subcommands().find_map(|sub| env_of(sub, long)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn invalid(args: &[&str]) -> String {
        match parse(args.iter().copied()) {
            Err(CliExit::Invalid(line)) => line,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    // These tests pass every setting as a flag; none of the variables they
    // would otherwise read is set by the test runner.

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_missing_setting_names_its_variable_on_one_line() {
        let line = invalid(&["svc", "migrate", "--amqp-url", "amqp://localhost"]);
        assert!(line.contains("DATABASE_URL"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn a_malformed_setting_names_its_variable_and_hides_its_value() {
        let line = invalid(&[
            "svc",
            "migrate",
            "--database-url",
            "mysql://user:hunter2@localhost/db",
            "--amqp-url",
            "amqp://localhost",
        ]);
        assert!(
            line.starts_with("svc: invalid setting DATABASE_URL"),
            "{line}"
        );
        assert!(!line.contains("hunter2"), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn a_bad_number_names_its_variable() {
        let line = invalid(&[
            "svc",
            "migrate",
            "--database-url",
            "postgres://localhost/db",
            "--amqp-url",
            "amqp://localhost",
            "--delivery-limit",
            "0",
        ]);
        assert_eq!(
            line,
            "svc: invalid setting SVC_DELIVERY_LIMIT (--delivery-limit): must be greater than zero"
        );
    }

    #[test]
    fn unusable_tls_settings_name_their_variable() {
        let migrate = |extra: &[&str], database: &str| {
            let mut args = vec!["svc", "migrate", "--amqp-url", "amqps://localhost"];
            args.extend(["--database-url", database]);
            args.extend(extra);
            invalid(&args)
        };
        let unknown_mode = migrate(&[], "postgres://localhost/db?sslmode=sometimes");
        assert!(
            unknown_mode.starts_with("svc: invalid setting DATABASE_URL"),
            "{unknown_mode}"
        );
        assert!(unknown_mode.contains("sometimes"), "{unknown_mode}");
        for key in ["sslrootcert", "sslcert", "sslkey"] {
            let line = migrate(
                &[],
                &format!("postgres://localhost/db?sslmode=verify-full&{key}=/nonexistent/x.pem"),
            );
            assert!(
                line.starts_with("svc: invalid setting DATABASE_URL"),
                "{line}"
            );
            assert!(line.contains(key), "{line}");
        }
        let bad_ca = migrate(
            &["--tls-ca-file", "/nonexistent/ca.pem"],
            "postgres://localhost/db",
        );
        assert!(
            bad_ca.starts_with("svc: invalid setting SVC_TLS_CA_FILE (--tls-ca-file)"),
            "{bad_ca}"
        );
        for line in [unknown_mode, bad_ca] {
            assert!(!line.contains('\n'), "{line}");
        }
    }

    #[test]
    fn migrate_status_needs_no_broker() {
        let cli = parse([
            "svc",
            "migrate",
            "--status",
            "--database-url",
            "postgres://localhost/db",
        ])
        .expect("valid");
        assert!(matches!(cli.command, Command::Migrate(args) if args.status));
    }

    #[test]
    fn help_is_information_not_an_error() {
        assert!(matches!(parse(["svc", "--help"]), Err(CliExit::Info(_))));
    }
}
