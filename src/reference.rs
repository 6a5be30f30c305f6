//! References generated from the clap definitions in `cli.rs`, so that no
//! flag table is ever copied by hand: the Markdown of `docs/cli.md`, shell
//! completion scripts and roff man pages.

use clap::CommandFactory;
use std::io::Write;
use std::path::Path;

use crate::cli::{Cli, Command};

/// Prints the reference `command` asks for (completions, man pages, the
/// Markdown reference); `None` when it is not one of those.
pub fn print(command: &Command) -> Option<std::io::Result<()>> {
    let mut stdout = std::io::stdout().lock();
    let printed = match command {
        Command::Completions { shell } => completions(*shell, &mut stdout),
        Command::Man { out_dir: None } => man_page(&mut stdout),
        Command::Man { out_dir: Some(dir) } => man_pages_to(dir),
        Command::MarkdownHelp => stdout.write_all(markdown().as_bytes()),
        _ => return None,
    };
    Some(printed.and_then(|()| stdout.flush()))
}

/// The command-line reference in Markdown: the content of `docs/cli.md`.
pub fn markdown() -> String {
    let command = with_env_in_help(Cli::command());
    let options = clap_markdown::MarkdownOptions::new()
        .title("idbase command-line reference".to_owned())
        .show_footer(false);
    let body = clap_markdown::help_markdown_command_custom(&command, &options);
    format!(
        "<!-- Generated from the clap definitions by `idbase markdown-help`; do not edit.\n     \
         Regenerate: cargo run -- markdown-help > docs/cli.md -->\n\n{body}"
    )
}

/// clap-markdown leaves out the environment variable of a flag, and in
/// Kubernetes the environment is how every setting arrives: append it to the
/// long help of every argument that has one, through the whole tree.
fn with_env_in_help(command: clap::Command) -> clap::Command {
    let command = command.mut_args(|arg| {
        let Some(env) = arg.get_env().map(|env| env.to_string_lossy().into_owned()) else {
            return arg;
        };
        let help = arg
            .get_long_help()
            .or_else(|| arg.get_help())
            .map(ToString::to_string)
            .unwrap_or_default();
        let separator = if help.is_empty() { "" } else { "\n\n" };
        arg.long_help(format!("{help}{separator}Environment: `{env}`"))
    });
    let names: Vec<String> = command
        .get_subcommands()
        .map(|sub| sub.get_name().to_owned())
        .collect();
    names.into_iter().fold(command, |command, name| {
        command.mut_subcommand(name, with_env_in_help)
    })
}

/// Writes the completion script of `shell` for `idbase`.
pub fn completions(shell: clap_complete::Shell, out: &mut dyn Write) -> std::io::Result<()> {
    // clap_complete panics when its writer fails (`idbase completions bash | head`):
    // render into memory, then report a write error like any other.
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "idbase", &mut script);
    out.write_all(&script)
}

/// Renders idbase(1), the top-level page that lists the subcommands.
pub fn man_page(out: &mut dyn Write) -> std::io::Result<()> {
    clap_mangen::Man::new(Cli::command()).render(out)
}

/// Writes idbase.1 and one page per visible subcommand (`idbase-migrate-bulkload.1`, …) into `dir`.
pub fn man_pages_to(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    clap_mangen::generate_to(Cli::command(), dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn the_clap_definitions_are_consistent() {
        Cli::command().debug_assert();
    }

    /// docs/cli.md is generated; this fails when a flag, default or help text
    /// changed without regenerating it. `IDBASE_BLESS=1` rewrites the file.
    #[test]
    fn docs_cli_md_is_up_to_date() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/cli.md");
        let generated = markdown();
        if std::env::var_os("IDBASE_BLESS").is_some() {
            std::fs::write(&path, &generated).expect("writing docs/cli.md");
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "docs/cli.md is out of date with the clap definitions. Regenerate it with\n  \
             cargo run -- markdown-help > docs/cli.md\nor\n  \
             IDBASE_BLESS=1 cargo test -p idbase --bin idbase docs_cli_md"
        );
    }

    #[test]
    fn the_reference_names_every_command_and_environment_variable() {
        let markdown = markdown();
        for heading in [
            "## `idbase dev`",
            "## `idbase idsvc`",
            "## `idbase gateway`",
            "## `idbase migrate bulkload`",
            "## `idbase keys generate`",
            "## `idbase completions`",
        ] {
            assert!(markdown.contains(heading), "missing {heading}");
        }
        assert!(markdown.contains("Environment: `IDBASE_DATABASE_URL`"));
        assert!(markdown.contains("Environment: `IDBASE_LOG_FORMAT`"));
        // The generator's own subcommand is hidden.
        assert!(!markdown.contains("## `idbase markdown-help`"));
    }

    fn completion(shell: clap_complete::Shell) -> String {
        let mut out = Vec::new();
        completions(shell, &mut out).expect("writing to memory");
        String::from_utf8(out).expect("completion scripts are UTF-8")
    }

    #[test]
    fn bash_completion_knows_the_subcommands_and_their_flags() {
        let script = completion(clap_complete::Shell::Bash);
        assert!(script.contains("complete -F _idbase"), "{script}");
        for word in ["migrate", "bulkload", "--database-url", "completions"] {
            assert!(script.contains(word), "bash completion lacks {word}");
        }
    }

    #[test]
    fn every_shell_gets_a_script() {
        use clap::ValueEnum;
        for shell in clap_complete::Shell::value_variants() {
            let script = completion(*shell);
            assert!(script.contains("idbase"), "{shell} script: {script}");
        }
    }

    #[test]
    fn the_man_page_is_roff_with_a_title_and_the_subcommands() {
        let mut out = Vec::new();
        man_page(&mut out).expect("rendering the man page");
        let page = String::from_utf8(out).expect("roff is UTF-8");
        assert!(
            page.lines().any(|line| line.starts_with(".TH idbase 1")),
            "{page}"
        );
        assert!(page.contains(".SH SUBCOMMANDS"), "{page}");
        assert!(page.contains("idbase\\-migrate"), "{page}");
    }

    #[test]
    fn man_pages_cover_every_subcommand() {
        let dir: PathBuf =
            std::env::temp_dir().join(format!("idbase-man-test-{}", std::process::id()));
        man_pages_to(&dir).expect("writing the man pages");
        for page in [
            "idbase.1",
            "idbase-migrate.1",
            "idbase-migrate-bulkload.1",
            "idbase-gateway.1",
        ] {
            let text = std::fs::read_to_string(dir.join(page)).expect(page);
            assert!(text.contains(".TH "), "{page} has no title line");
        }
        assert!(!dir.join("idbase-markdown-help.1").exists());
        std::fs::remove_dir_all(&dir).expect("removing the test directory");
    }
}
