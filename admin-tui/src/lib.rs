//! idbase's admin console. Its scriptable half: `idbase admin phase …`,
//! `user …` and `events`, a gRPC client of idsvc's admin port
//! (`idbase.v1.Phases` and `idbase.v1.Admin`) with human and JSON output
//! and exit codes a script can branch on ([`Exit`]).
//!
//! The binary's `main` only parses the command line and calls [`run`]; the
//! tests call [`run_with`] with their own output buffers and token.

pub mod client;
pub mod events;
pub mod failure;
pub mod output;
pub mod phase;
pub mod tls;
pub mod user;

pub use client::ConnectionArgs;
pub use failure::{Exit, Failure};

use std::io::Write;

/// `idbase admin`.
#[derive(Clone, Debug, clap::Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub connection: ConnectionArgs,
    /// Print results (and failures) as JSON on stdout, for scripts.
    #[arg(long, global = true, env = "IDBASE_ADMIN_JSON")]
    pub json: bool,
    #[command(subcommand)]
    pub command: AdminCommand,
}

#[derive(Clone, Debug, clap::Subcommand)]
pub enum AdminCommand {
    /// Read and move the migration phase (the cutover between legacy and idbase).
    #[command(subcommand)]
    Phase(phase::PhaseCommand),
    /// Member support: look a member up (masked), reveal, revoke sessions;
    /// each with a reason, audited with your name.
    #[command(subcommand)]
    User(user::UserCommand),
    /// The audit and security events, resumable by cursor; `--follow` to
    /// tail them.
    Events(events::EventsArgs),
}

/// What a command printed or found.
enum Done {
    Phase(phase::Outcome),
    User(user::Outcome),
    /// Printed as it streamed.
    Streamed(Exit),
}

/// The environment variable that may carry the admin token instead of
/// `--admin-token-file` (a flag would show the token in `ps`).
pub const TOKEN_ENV: &str = "IDBASE_ADMIN_TOKEN";

/// Runs one command on stdout/stderr with the token from the environment
/// when no token file is given.
pub async fn run(args: AdminArgs) -> Exit {
    let env_token = std::env::var(TOKEN_ENV).ok();
    let mut out = std::io::stdout().lock();
    let mut err = std::io::stderr().lock();
    let exit = run_with(args, env_token, &mut out, &mut err).await;
    // The caller exits the process, which does not flush stdout.
    let _ = out.flush();
    exit
}

/// Runs one command: the result goes to `out` (human text or JSON), a
/// failure to `err` as one line (and to `out` as JSON with `--json`).
pub async fn run_with(
    args: AdminArgs,
    env_token: Option<String>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Exit {
    let json = args.json;
    let outcome = async {
        let client = client::connect(&args.connection, env_token).await?;
        match args.command {
            AdminCommand::Phase(command) => phase::execute(command, client).await.map(Done::Phase),
            AdminCommand::User(command) => user::execute(command, client).await.map(Done::User),
            AdminCommand::Events(events) => events::run(events, client, json, out, err)
                .await
                .map(Done::Streamed),
        }
    }
    .await;
    // Output errors (a closed pipe) change nothing: the exit code already says it all.
    match outcome {
        Ok(Done::Phase(result)) => {
            let text = if json {
                output::json(&result)
            } else {
                output::human(&result)
            };
            let _ = out.write_all(text.as_bytes());
            result.exit()
        }
        Ok(Done::User(result)) => {
            let text = if json {
                user::json(&result)
            } else {
                user::human(&result)
            };
            let _ = out.write_all(text.as_bytes());
            result.exit()
        }
        Ok(Done::Streamed(exit)) => exit,
        Err(failure) => {
            let _ = writeln!(err, "idbase admin: {}", failure.line());
            if json {
                let _ = out.write_all(output::failure_json(&failure).as_bytes());
            } else if let Some(checks) = &failure.checks {
                let _ = out.write_all(output::checks(checks).as_bytes());
            }
            failure.exit
        }
    }
}
