//! The `svc` binary: parse the command line, install telemetry, dispatch.

use std::process::ExitCode;

use svc::{
    cli::{self, CliExit, Command},
    consume, migrate, serve, shutdown, telemetry,
};

/// mimalloc: less CPU per allocation than glibc's malloc on the request path,
/// and a smaller resident set under many connections (measured in
/// docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    if let Err(err) = dotenvy::dotenv()
        && !err.not_found()
    {
        eprintln!("svc: cannot read .env: {err}");
        return ExitCode::from(2);
    }
    let cli = match cli::parse(std::env::args_os()) {
        Ok(cli) => cli,
        Err(CliExit::Info(text)) => {
            print!("{text}");
            return ExitCode::SUCCESS;
        }
        Err(CliExit::Invalid(line)) => {
            eprintln!("{line}");
            return ExitCode::from(2);
        }
    };
    telemetry::init(cli.log.log_format);

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("svc: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let result = match cli.command {
            Command::Serve(args) => serve::run(args, shutdown::on_signal()).await,
            Command::Consume(args) => consume::run(args, shutdown::on_signal()).await,
            Command::Migrate(args) => migrate::run(args).await,
            #[cfg(feature = "loadtest")]
            Command::Loadtest(args) => {
                let outcome = svc_loadtest::run(args).await;
                if let svc_loadtest::Outcome::NotRun(reason) = &outcome {
                    eprintln!("svc loadtest: could not run: {reason}");
                }
                return ExitCode::from(outcome.exit_code());
            }
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                tracing::error!(error = %format!("{err:#}"), "svc failed");
                eprintln!("svc: {err:#}");
                ExitCode::FAILURE
            }
        }
    })
}
