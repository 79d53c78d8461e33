//! The `svc` binary: parse the command line, install telemetry, dispatch.

use std::{
    cell::Cell,
    process::ExitCode,
    time::{Duration, Instant},
};

use svc::{
    cli::{self, CliExit, Command},
    consume, migrate, serve, shutdown, telemetry,
};

/// mimalloc: less CPU per allocation than glibc's malloc on the request path,
/// and a smaller resident set under many connections (measured in
/// docs/PERFORMANCE.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How often an idle worker thread hands memory back (`collect_when_idle`).
const COLLECT_EVERY: Duration = Duration::from_secs(1);

/// Called each time a worker thread runs out of work: at most once per
/// `COLLECT_EVERY` on each thread, mimalloc takes in the blocks other
/// threads freed on this thread's pages and gives emptied pages back to the
/// system. mimalloc does that work only while a thread allocates, so without
/// this a worker gone quiet after a surge keeps what the surge took: about
/// three times the resident memory 10 s after 5,000 writing connections
/// close (docs/PERFORMANCE.md, "Decisions measurement drove"), at no cost
/// seen in requests/s.
fn collect_when_idle() {
    thread_local! {
        static COLLECTED: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = COLLECTED.get().is_none_or(|at| now - at >= COLLECT_EVERY);
    if due {
        COLLECTED.set(Some(now));
        // SAFETY: `mi_collect` takes no pointers and touches only the
        // allocator's own state, under its own synchronisation: any thread
        // may call it at any time. `true` returns memory to the system
        // eagerly (after a surge, the next 1,000 writing connections peaked
        // at 53–61 MiB, against 61–63 with `false`); once a second, its cost
        // did not show in requests/s.
        unsafe { libmimalloc_sys::mi_collect(true) };
    }
}

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
        .on_thread_park(collect_when_idle)
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
