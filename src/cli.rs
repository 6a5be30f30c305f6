//! The command line of `idbase`: every subcommand and flag. The libraries own
//! their flags (`idsvc::IdsvcArgs`, `gateway::GatewayArgs`, the migration
//! jobs' arguments); this module assembles them into one tree, which is also
//! the source of `docs/cli.md`, the shell completions and the man pages.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;

use crate::dev;

#[derive(Parser)]
#[command(
    name = "idbase",
    version,
    about = "Identity platform and zero-downtime member migration"
)]
pub struct Cli {
    /// Log format: `json` for production, `pretty` for people.
    ///
    /// Defaults to `pretty` for `dev` and `keys`, `json` for everything else.
    #[arg(long, global = true, env = "IDBASE_LOG_FORMAT", value_enum)]
    pub log_format: Option<LogFormat>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Pretty,
}

#[derive(Subcommand)]
pub enum Command {
    /// idsvc and gateway in one process on SQLite: zero setup, for development.
    Dev(Box<dev::DevArgs>),
    /// The ID service (gRPC).
    Idsvc(Box<idsvc::IdsvcArgs>),
    /// The HTTP gateway.
    Gateway(Box<gateway::GatewayArgs>),
    /// The admin console's scriptable commands over idsvc's admin port
    /// (`idbase admin phase …`).
    ///
    /// Exit codes: 0 ok, 1 other error, 2 usage, 3 refused (a check fails),
    /// 4 conflict (the generation moved), 5 unauthorised, 6 unreachable.
    Admin(admin_tui::AdminArgs),
    /// Key management.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// The zero-downtime migration jobs (docs/migration.md).
    #[command(subcommand)]
    Migrate(idsvc::migration::MigrateCommand),
    /// Print a shell completion script to stdout.
    ///
    /// Bash: `idbase completions bash > /etc/bash_completion.d/idbase`;
    /// zsh: `idbase completions zsh > "${fpath[1]}/_idbase"`;
    /// fish: `idbase completions fish > ~/.config/fish/completions/idbase.fish`.
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page idbase(1) as roff to stdout, or write every page to a directory.
    ///
    /// `idbase man | man -l -` reads it at once; `idbase man --out-dir DIR` writes
    /// idbase.1 and one page per subcommand (idbase-migrate-bulkload.1, …) for
    /// packaging under share/man/man1.
    Man {
        /// Write idbase.1 and one page per subcommand into this directory instead.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the command-line reference as Markdown (the content of docs/cli.md).
    #[command(hide = true)]
    MarkdownHelp,
}

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create PII, blind-index and signing keys in DIR; run again to rotate.
    Generate {
        /// The keys directory; created with mode 0700 if absent. Existing keys are never overwritten.
        #[arg(long, env = "IDBASE_KEYS_DIR", value_name = "DIR")]
        out: PathBuf,
    },
}
