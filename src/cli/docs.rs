//! `completions <shell>` and `man`: shell completions and a man page, generated from the
//! same clap definition the parser uses, so they cannot drift from the flags.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};

use super::Cli;

#[derive(Args)]
pub struct CompletionsArgs {
    /// bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// Print the completion script for a shell, e.g.
/// `maeday-edge completions bash > /etc/bash_completion.d/maeday-edge`.
pub fn completions(a: CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(a.shell, &mut cmd, "maeday-edge", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// Print the man page (roff), e.g. `maeday-edge man > /usr/share/man/man1/maeday-edge.1`.
/// It covers every subcommand: each gets its own section with its flags.
pub fn man() -> Result<ExitCode> {
    let cmd = Cli::command();
    let mut out = Vec::new();
    let man = clap_mangen::Man::new(cmd.clone());
    man.render_title(&mut out)?;
    man.render_name_section(&mut out)?;
    man.render_synopsis_section(&mut out)?;
    man.render_description_section(&mut out)?;
    man.render_options_section(&mut out)?;
    man.render_subcommands_section(&mut out)?;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        writeln!(out, ".SH \"{}\"", sub.get_name().to_uppercase())?;
        let page =
            clap_mangen::Man::new(sub.clone().name(format!("maeday-edge {}", sub.get_name())));
        page.render_synopsis_section(&mut out)?;
        page.render_description_section(&mut out)?;
        page.render_options_section(&mut out)?;
    }
    man.render_version_section(&mut out)?;
    std::io::stdout()
        .write_all(&out)
        .context("cannot write the man page")?;
    Ok(ExitCode::SUCCESS)
}
