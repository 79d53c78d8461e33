//! Ctrl-C: the first stops the run cleanly (goose ends the phase, the
//! report is written with what was measured, marked as interrupted); a
//! second exits at once.
//!
//! goose installs a Ctrl-C handler of its own when its first attack starts;
//! installing ours first makes that one a no-op, so a Ctrl-C during seeding
//! or the durability check is seen too.

use std::sync::{
    Once,
    atomic::{AtomicBool, Ordering},
};

static REQUESTED: AtomicBool = AtomicBool::new(false);
static HANDLER: Once = Once::new();

/// Starts listening for Ctrl-C (once per process), and forgets an earlier one.
pub fn listen() {
    HANDLER.call_once(|| {
        let installed = ctrlc::set_handler(|| {
            if REQUESTED.swap(true, Ordering::SeqCst) {
                eprintln!("loadtest: interrupted again; exiting at once");
                std::process::exit(130);
            }
            eprintln!("loadtest: interrupted; stopping and writing the report (Ctrl-C again exits at once)");
            goose::trigger_killswitch("interrupted (Ctrl-C)");
        });
        if let Err(err) = installed {
            tracing::warn!(error = %err, "cannot catch Ctrl-C; it will stop the run without a report");
        }
    });
    REQUESTED.store(false, Ordering::SeqCst);
}

/// Whether Ctrl-C was pressed since [`listen`].
pub fn requested() -> bool {
    REQUESTED.load(Ordering::SeqCst)
}
