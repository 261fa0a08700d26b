//! `etlfs completions SHELL` and `etlfs man`: the shell completion scripts and the man pages,
//! generated from the command line's own definition (clap_complete, clap_mangen), so that they
//! never disagree with what the binary accepts.

use std::io::Write;
use std::path::Path;

use anyhow::Context;

use crate::escape::esc;

/// Prints the completion script of `shell` for `cli`.
pub fn completions(shell: clap_complete::Shell, mut cli: clap::Command) -> anyhow::Result<()> {
    use clap_complete::Generator;
    // What `clap_complete::generate` does, with the write error returned rather than a panic
    // (`etlfs completions bash | head`).
    let name = cli.get_name().to_owned();
    cli.set_bin_name(name);
    cli.build();
    let mut out = std::io::stdout().lock();
    shell
        .try_generate(&cli, &mut out)
        .and_then(|()| out.flush())
        .context("writing the completion script")
}

/// Prints the man page of `cli` (section 1), or of its subcommand `command` (`etlfs-mount(1)`,
/// ...); with `dir`, writes every page into that directory instead.
pub fn man(cli: clap::Command, command: Option<&str>, dir: Option<&Path>) -> anyhow::Result<()> {
    let mut cli = cli.disable_help_subcommand(true);
    // Gives the subcommands their display names (`etlfs-mount`), as the pages title them.
    cli.build();
    if let Some(dir) = dir {
        return std::fs::create_dir_all(dir)
            .and_then(|()| clap_mangen::generate_to(cli, dir))
            .with_context(|| format!("writing the man pages into {}", esc(dir)));
    }
    let page =
        match command {
            None => cli,
            Some(name) => cli.find_subcommand(name).cloned().ok_or_else(|| {
                crate::cli::UsageError::Missing {
                    what: "command",
                    path: name.into(),
                }
            })?,
        };
    let mut out = std::io::stdout().lock();
    clap_mangen::Man::new(page)
        .render(&mut out)
        .and_then(|()| out.flush())
        .context("writing the man page")
}
