//! The stub: the program at the front of every sydney bundle.
//!
//! It maps its own file, validates the payload, unpacks it atomically into a
//! private content-addressed cache (once), and execs the release's entry.
//! It also carries the lifecycle commands (`daemon`, `stop`, `pid`, ...) so
//! that a release runs and is managed where no shell exists. See
//! ARCHITECTURE.md for the moving parts and docs/EXIT_CODES.md for exit codes.

mod arena;
mod cache;
mod cli;
mod exit;
mod health;
mod init;
mod launch;
mod lifecycle;
mod maint;
mod portable;
mod selfexe;
mod supervise;
mod sys;
mod tree;
mod trust;
mod ui;
mod upgrade;

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result};
use argh::FromArgs;
use bundle_format::Bundle;

use crate::cli::{Cli, Command};
use crate::exit::{Exit, coded, exit_for};

/// Small allocations from a static arena: see `arena` for why.
#[global_allocator]
static ALLOCATOR: arena::Arena<'static> = arena::Arena::new();

fn main() -> ExitCode {
    let argv0 = std::env::args_os().next().unwrap_or_default();
    let program = Path::new(&argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "sydney-bundle".to_owned());
    ui::set_program(&program);

    let args: Vec<String> = match std::env::args_os()
        .skip(1)
        .map(|a| a.into_string())
        .collect::<Result<_, _>>()
    {
        Ok(args) => args,
        Err(bad) => {
            ui::error(&format!("argument {bad:?} is not valid UTF-8"));
            return ExitCode::from(Exit::Usage.code());
        }
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let cli = match Cli::from_args(&[&program], &args) {
        Ok(cli) => cli,
        Err(early) => return early_exit(&program, early),
    };
    let Some(command) = cli.command else {
        eprintln!("{}", help(&program));
        return ExitCode::from(Exit::Usage.code());
    };
    match run(command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            ui::error(&format!("{err:#}"));
            ExitCode::from(exit_for(&err).code())
        }
    }
}

/// `--help` (exit 0) or a usage error: the message, then the usage (exit 2).
fn early_exit(program: &str, early: argh::EarlyExit) -> ExitCode {
    match early.status {
        // The top-level help gets the exit codes; a command's help does not.
        Ok(()) if early.output == argh_help(program) => {
            println!("{}", help(program));
            ExitCode::SUCCESS
        }
        Ok(()) => {
            println!("{}", early.output);
            ExitCode::SUCCESS
        }
        Err(()) => {
            eprintln!("{program}: error: {}", early.output.trim_end());
            eprintln!("{}", help(program));
            ExitCode::from(Exit::Usage.code())
        }
    }
}

/// The top-level help: argh's, then the exit codes.
fn help(program: &str) -> String {
    let footer = cli::exit_code_footer();
    format!("{}\n{}", argh_help(program), footer.trim_end())
}

fn argh_help(program: &str) -> String {
    match Cli::from_args(&[program], &["--help"]) {
        Err(early) => early.output,
        Ok(_) => String::new(),
    }
}

fn run(command: Command) -> Result<()> {
    if let Command::Healthcheck(args) = &command {
        // Needs nothing from the bundle: stays cheap for frequent probes.
        let url = args.url.clone().unwrap_or_else(health::default_url);
        if args.timeout_ms == 0 {
            return Err(coded(Exit::Usage, "--timeout-ms must be at least 1"));
        }
        let timeout = Duration::from_millis(args.timeout_ms);
        println!("{}", health::check(&url, timeout)?);
        return Ok(());
    }

    let file = selfexe::open()?;
    let bundle = Bundle::open(&file.map)
        .with_context(|| format!("cannot read the bundle {}", file.path().display()))?
        .with_page_release(sys::release_pages);
    let name = bundle.manifest().name.clone();
    if matches!(
        command,
        Command::Start(_)
            | Command::Exec(_)
            | Command::Daemon(_)
            | Command::Restart(_)
            | Command::Extract(_)
    ) {
        trust::check_at_start(&bundle)?;
    }
    match command {
        Command::Version(_) => println!("{} {}", name, bundle.manifest().version),
        Command::Start(args) => return Err(start(&bundle, &args.args, true)),
        Command::Exec(args) => return Err(start(&bundle, &args.args, false)),
        Command::Daemon(args) => daemon(&bundle, &file.path(), &args.args)?,
        Command::Stop(args) => {
            let state = state_for_control(&bundle)?;
            let pid = stop(&name, &state, Duration::from_secs(args.timeout))?;
            println!("stopped {name} (pid {pid})");
        }
        Command::Upgrade(args) => {
            let running = running(&bundle, &file)?;
            let timeout = Duration::from_secs(args.timeout);
            println!(
                "{}",
                upgrade::upgrade(&running, Path::new(&args.file), timeout)?
            );
        }
        Command::Rollback(args) => {
            let running = running(&bundle, &file)?;
            println!(
                "{}",
                upgrade::rollback(&running, Duration::from_secs(args.timeout))?
            );
        }
        Command::Restart(args) if supervised(&bundle)? => {
            let running = running(&bundle, &file)?;
            println!(
                "{}",
                upgrade::restart(&running, &args.args, supervise::READY_TIMEOUT)?
            );
        }
        Command::Restart(args) => {
            let state = state_for_control(&bundle)?;
            let stopped = match stop(&name, &state, Duration::from_secs(args.timeout)) {
                Ok(pid) => {
                    println!("stopped {name} (pid {pid})");
                    Some(pid)
                }
                Err(err) if exit_for(&err) == Exit::NotRunning => None,
                Err(err) => return Err(err),
            };
            daemon(&bundle, &file.path(), &args.args).map_err(|err| match stopped {
                Some(pid) => err.context(format!(
                    "stopped {name} (pid {pid}) but could not start it again; nothing runs now"
                )),
                None => err,
            })?;
        }
        Command::Pid(_) => {
            let state = state_for_control(&bundle)?;
            if !state.check()? {
                return Err(coded(Exit::NotRunning, format!("{name} is not running")));
            }
            match state.status()? {
                lifecycle::Status::Running(record) => println!("{}", record.pid),
                lifecycle::Status::NotRunning { .. } => {
                    return Err(coded(Exit::NotRunning, format!("{name} is not running")));
                }
            }
        }
        Command::Inspect(args) => print!(
            "{}",
            maint::inspect(&bundle, &file.path(), args.files, args.doctor)?
        ),
        Command::Verify(args) => print!("{}", maint::verify(&bundle, args.deep)?),
        Command::Extract(args) => print!("{}", maint::extract(&bundle, Path::new(&args.dir))?),
        Command::Clean(args) => print!("{}", maint::clean(&bundle, args.all)?),
        Command::Healthcheck(_) => unreachable!("handled above"),
    }
    Ok(())
}

/// `start` and `exec`: returns only on failure.
fn start(bundle: &Bundle<'_>, user_args: &[String], default_args: bool) -> anyhow::Error {
    let ready = match launch::prepare(bundle, default_args, user_args) {
        Ok(ready) => ready,
        Err(err) => return err,
    };
    portable::before_entry(bundle, &ready);
    // Not recorded in the pidfile: a foreground instance belongs to whoever
    // started it (a shell, systemd, docker). Recording it would cost a
    // synchronous rename on every start (ext4 flushes replaced files).
    if sys::getpid() == 1 && std::env::var_os("SYDNEY_BUNDLE_INIT").is_none_or(|v| v != "0") {
        init::run(bundle, &ready);
    }
    launch::exec(bundle, &ready)
}

fn daemon(bundle: &Bundle<'_>, path: &Path, user_args: &[String]) -> Result<()> {
    let mut ready = launch::prepare(bundle, true, user_args)?;
    portable::before_entry(bundle, &ready);
    let supervised = match supervise::listen_spec(bundle) {
        Some(spec) => Some(supervise::Plan {
            bundle_path: path.to_path_buf(),
            args: user_args.to_vec(),
            listeners: supervise::bind(&spec)?,
        }),
        None => None,
    };
    if supervised.is_some() {
        // Each server's own stub holds its tree; the supervisor must not
        // keep this one in use for as long as it lives.
        drop(ready.tree.take());
    }
    let pid = lifecycle::daemon(bundle, &ready, supervised)?;
    let state = lifecycle::state_dir(
        cache::state_dir(&ready.cache_env, &ready.decision, &bundle.manifest().name),
        &ready.decision,
    )?;
    println!(
        "started {} (pid {pid}); log: {}",
        bundle.manifest().name,
        state.log_path().display()
    );
    Ok(())
}

/// `stop`: waits for a running upgrade to finish, stops the server, then
/// waits (bounded) for its supervisor, if any, to exit too.
fn stop(name: &str, state: &lifecycle::StateDir, timeout: Duration) -> Result<i32> {
    let supervisor = match state.check()? {
        true => supervise::running(state)?,
        false => None,
    };
    let _upgrades = match supervisor {
        Some(_) => {
            let lock = lifecycle::StateDir::open_lock(&state.file("upgrade.lock"))?;
            sys::flock(&lock, sys::Lock::Exclusive)?;
            Some(lock)
        }
        None => None,
    };
    let pid = lifecycle::stop(name, state, timeout)?;
    if let Some(record) = supervisor {
        if !supervise::wait_gone(record, Duration::from_secs(5)) {
            anyhow::bail!(
                "stopped {name} (pid {pid}) but its supervisor (pid {}) is still there",
                record.pid
            );
        }
    }
    Ok(pid)
}

/// What `upgrade`, `rollback` and `restart` work on.
fn running<'a>(bundle: &'a Bundle<'a>, file: &selfexe::SelfFile) -> Result<upgrade::Running<'a>> {
    Ok(upgrade::Running {
        bundle,
        path: file.path(),
        state: state_for_control(bundle)?,
    })
}

/// Whether the running instance has a supervisor (for `restart`).
fn supervised(bundle: &Bundle<'_>) -> Result<bool> {
    let state = state_for_control(bundle)?;
    Ok(state.check()? && supervise::running(&state)?.is_some())
}

/// The state dir for `stop`, `pid` and `restart`: the same chain walk as
/// `start`, without creating or extracting anything.
fn state_for_control(bundle: &Bundle<'_>) -> Result<lifecycle::StateDir> {
    let env = cache::Env::from_process();
    let decision =
        cache::preview_bundle(&env, bundle).map_err(cache::ExplicitRefused::into_error)?;
    lifecycle::state_dir(cache::control_state_dir(&env, bundle, &decision), &decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The top-level help ends with exactly the codes of [`Exit::TABLE`], in
    /// order, and no second list; a command's help has none.
    #[test]
    fn help_lists_every_exit_code_once() {
        let help = help("sydney-bundle");
        let (_, footer) = help
            .split_once("Exit codes (docs/EXIT_CODES.md):\n")
            .expect("the help has an exit-code footer");
        let listed: Vec<(u8, &str)> = footer
            .lines()
            .map(|line| {
                let (code, meaning) = line.trim_start().split_once("  ").expect("code  meaning");
                (code.parse().expect("a number"), meaning)
            })
            .collect();
        let table: Vec<(u8, &str)> = Exit::TABLE
            .iter()
            .map(|&(exit, meaning)| (exit.code(), meaning))
            .collect();
        assert_eq!(listed, table);
        assert!(!help.contains("Error codes"), "argh's own list is back");

        let Err(command_help) = Cli::from_args(&["sydney-bundle"], &["start", "--help"]) else {
            panic!("start --help did not exit early");
        };
        assert!(command_help.status.is_ok());
        assert_ne!(command_help.output, argh_help("sydney-bundle"));
        assert!(!command_help.output.contains("Exit codes"));
    }
}
