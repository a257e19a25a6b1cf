//! `mkectl install controller|worker [--start] [FLAGS...]`: writes
//! `mkectl-<role>.service` from the templates in `packaging/`, with
//! ExecStart = this executable + the non-default global flags + the role's
//! flags, quoted for systemd; then `systemctl daemon-reload`, and with
//! `--start` `systemctl enable` + start (restart when the unit changed).

use std::path::Path;
use std::process::Command;

use anyhow::Context;
use clap::{CommandFactory, Parser, ValueEnum};

use crate::cli::{Cli, GlobalArgs, InstallArgs, InstallRole, DEFAULT_DATA_DIR, DEFAULT_RUN_DIR};
use crate::exit::{UnavailableError, UsageError};
use crate::fsutil;
use crate::telemetry::LogFormat;

const CONTROLLER_TEMPLATE: &str = include_str!("../../packaging/mkectl-controller.service");
const WORKER_TEMPLATE: &str = include_str!("../../packaging/mkectl-worker.service");
/// Placeholder in the templates.
const EXEC_PLACEHOLDER: &str = "@EXEC_START@";
/// Present when systemd is the running init (sd_booted(3)).
const SYSTEMD_RUNTIME_DIR: &str = "/run/systemd/system";
/// Mode of a unit file.
const UNIT_MODE: u32 = 0o644;

/// The unit's file name for a role.
pub fn unit_name(role: InstallRole) -> String {
    format!("mkectl-{}.service", role.subcommand())
}

pub fn run(global: &GlobalArgs, args: &InstallArgs) -> anyhow::Result<()> {
    if args.start && args.no_systemctl {
        return Err(UsageError("--start needs systemctl; drop --no-systemctl".into()).into());
    }
    let mut flags = args.flags.clone();
    if flags.first().map(String::as_str) == Some("--") {
        flags.remove(0);
    }
    let exe = std::env::current_exe()
        .and_then(|p| p.canonicalize())
        .context("locating this mkectl executable")?;
    let mut argv = vec![exe.to_string_lossy().into_owned()];
    argv.extend(global_flags(global)?);
    argv.push(args.role.subcommand().to_string());
    argv.extend(flags);
    validate_flags(args.role, &argv)?;

    let use_systemctl = !args.no_systemctl;
    let systemd_running = Path::new(SYSTEMD_RUNTIME_DIR).is_dir();
    if args.start && !systemd_running {
        return Err(UnavailableError(format!(
            "systemd is not running on this host ({SYSTEMD_RUNTIME_DIR} is missing): cannot start {}; \
             nothing was written (use --no-systemctl to only write the unit)",
            unit_name(args.role)
        ))
        .into());
    }

    let unit = render_unit(args.role, &argv);
    let path = args.unit_dir.join(unit_name(args.role));
    if !args.unit_dir.is_dir() {
        fsutil::ensure_dir(&args.unit_dir, 0o755)?;
    }
    let written = fsutil::write_atomic(&path, unit.as_bytes(), UNIT_MODE)?;
    println!(
        "{} {}",
        if written { "wrote" } else { "unchanged:" },
        path.display()
    );
    println!("ExecStart={}", exec_start(&argv));

    if !use_systemctl {
        return Ok(());
    }
    if !systemd_running {
        println!(
            "systemd is not running on this host; run `systemctl daemon-reload` once it is, \
             then `systemctl enable --now {}`",
            unit_name(args.role)
        );
        return Ok(());
    }
    systemctl(&["daemon-reload"])?;
    if args.start {
        let name = unit_name(args.role);
        systemctl(&["enable", &name])?;
        // A changed unit must restart to take effect; an unchanged one only
        // needs to be running.
        systemctl(&[if written { "restart" } else { "start" }, &name])?;
        println!(
            "{name} enabled and {}",
            if written { "(re)started" } else { "started" }
        );
    } else {
        println!(
            "start it with: systemctl enable --now {}",
            unit_name(args.role)
        );
    }
    Ok(())
}

/// Global flags that differ from their defaults, with absolute paths (a
/// unit runs from `/`).
fn global_flags(global: &GlobalArgs) -> anyhow::Result<Vec<String>> {
    let abs = |p: &Path| -> anyhow::Result<String> {
        Ok(std::path::absolute(p)
            .with_context(|| format!("making {} absolute", p.display()))?
            .to_string_lossy()
            .into_owned())
    };
    let mut out = Vec::new();
    if global.data_dir != Path::new(DEFAULT_DATA_DIR) {
        out.extend(["--data-dir".to_string(), abs(&global.data_dir)?]);
    }
    if global.run_dir != Path::new(DEFAULT_RUN_DIR) {
        out.extend(["--run-dir".to_string(), abs(&global.run_dir)?]);
    }
    if let Some(b) = &global.bin_dir {
        out.extend(["--bin-dir".to_string(), abs(b)?]);
    }
    if let Some(c) = &global.config {
        if c == Path::new("-") {
            return Err(UsageError(
                "--config -: a service cannot read its configuration from standard input; give a file"
                    .into(),
            )
            .into());
        }
        out.extend(["--config".to_string(), abs(c)?]);
    }
    if global.log_format != LogFormat::default() {
        if let Some(v) = global.log_format.to_possible_value() {
            out.extend(["--log-format".to_string(), v.get_name().to_string()]);
        }
    }
    if global.verbose > 0 {
        out.push(format!("-{}", "v".repeat(usize::from(global.verbose))));
    }
    Ok(out)
}

/// Parses the command line the unit will run with mkectl's own CLI, so a
/// typo fails now rather than in a restart loop. Skipped (with a note) for a
/// role this build does not know.
fn validate_flags(role: InstallRole, argv: &[String]) -> anyhow::Result<()> {
    let role = role.subcommand();
    if Cli::command().find_subcommand(role).is_none() {
        eprintln!("note: this mkectl has no `{role}` command; its flags are written unchecked");
        return Ok(());
    }
    match Cli::try_parse_from(argv) {
        Ok(_) => Ok(()),
        Err(e) => Err(UsageError(format!(
            "the flags for `mkectl {role}` do not parse; nothing was written:\n{}",
            e.render()
        ))
        .into()),
    }
}

fn systemctl(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("systemctl").args(args).output().map_err(|e| {
        anyhow::Error::new(UnavailableError(format!(
            "cannot run systemctl {}: {e}",
            args.join(" ")
        )))
    })?;
    if !out.status.success() {
        anyhow::bail!(
            "systemctl {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// What a controller unit gains with `--enable-worker`: containerd and
/// kubelet manage cgroups below the unit and need these modules (as in the
/// worker template).
const CONTROLLER_WORKER_EXTRA: &str = "\
# --enable-worker: kubelet and containerd create and manage cgroups below this
# unit, and containerd needs these kernel modules.
Delegate=yes
ExecStartPre=-/sbin/modprobe overlay
ExecStartPre=-/sbin/modprobe br_netfilter
";

/// The unit file for `role` running `argv`.
pub fn render_unit(role: InstallRole, argv: &[String]) -> String {
    let template = match role {
        InstallRole::Controller => CONTROLLER_TEMPLATE,
        InstallRole::Worker => WORKER_TEMPLATE,
    };
    let exec = format!("ExecStart={}\n", exec_start(argv));
    let mut unit = template.replace(&format!("ExecStart={EXEC_PLACEHOLDER}\n"), &exec);
    if role == InstallRole::Controller && argv.iter().any(|a| a == "--enable-worker") {
        unit = unit.replace(&exec, &format!("{exec}{CONTROLLER_WORKER_EXTRA}"));
    }
    unit
}

/// `argv` as one ExecStart value.
pub fn exec_start(argv: &[String]) -> String {
    argv.iter()
        .map(|a| systemd_quote(a))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Quotes one ExecStart word (systemd.service(5), "Command lines"): `%`
/// (specifiers) and `$` (environment expansion) are doubled everywhere; a
/// word with anything outside a plain set is double-quoted with C escapes; a
/// lone `;` (command separator) is escaped.
pub fn systemd_quote(arg: &str) -> String {
    let escaped = arg.replace('%', "%%").replace('$', "$$");
    if arg == ";" {
        return "\\;".into();
    }
    let plain = !arg.is_empty()
        && arg
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%$".contains(c));
    if plain {
        return escaped;
    }
    let mut out = String::with_capacity(escaped.len() + 2);
    out.push('"');
    for c in escaped.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", u32::from(c) & 0xff)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `TimeoutStopSec` in both templates.
    const UNIT_STOP_TIMEOUT_SECS: u64 = 150;

    #[test]
    fn quoting() {
        for (arg, want) in [
            ("/usr/local/bin/mkectl", "/usr/local/bin/mkectl"),
            ("--data-dir=/var/lib/mke", "--data-dir=/var/lib/mke"),
            ("100%", "100%%"),
            ("$HOME", "$$HOME"),
            ("with space", "\"with space\""),
            ("", "\"\""),
            ("a\"b", "\"a\\\"b\""),
            ("back\\slash", "\"back\\\\slash\""),
            ("new\nline", "\"new\\nline\""),
            ("it's", "\"it's\""),
            (";", "\\;"),
            ("a;b", "\"a;b\""),
            ("50% of $X y", "\"50%% of $$X y\""),
            ("bell\u{7}", "\"bell\\x07\""),
        ] {
            assert_eq!(systemd_quote(arg), want, "{arg:?}");
        }
    }

    #[test]
    fn templates_have_one_placeholder_and_the_chosen_kill_modes() {
        for (t, kill) in [
            (CONTROLLER_TEMPLATE, "KillMode=mixed"),
            (WORKER_TEMPLATE, "KillMode=process"),
        ] {
            assert_eq!(t.matches(EXEC_PLACEHOLDER).count(), 1);
            assert!(t.contains(kill));
            assert!(t.contains(&format!("TimeoutStopSec={UNIT_STOP_TIMEOUT_SECS}")));
            assert!(t.contains("Restart=always"));
            assert!(t.contains("LimitNOFILE="));
        }
        assert!(WORKER_TEMPLATE.contains("Delegate=yes"));
        assert!(!CONTROLLER_TEMPLATE.contains("Delegate="));
        // systemd's stop timeout must outlast mkectl's own shutdown deadline,
        // or systemd SIGKILLs a controller still draining its apiserver.
        assert!(UNIT_STOP_TIMEOUT_SECS >= crate::node::lifecycle::SHUTDOWN_DEADLINE.as_secs() + 15);
        let unit = render_unit(
            InstallRole::Worker,
            &[
                "/bin/mkectl".into(),
                "worker".into(),
                "--token-file".into(),
                "/etc/mke/tok en".into(),
            ],
        );
        assert!(
            unit.contains("ExecStart=/bin/mkectl worker --token-file \"/etc/mke/tok en\"\n"),
            "{unit}"
        );
    }

    #[test]
    fn a_controller_with_the_worker_side_gets_cgroup_delegation() {
        let argv = |extra: &[&str]| -> Vec<String> {
            let mut v = vec!["/bin/mkectl".to_string(), "controller".to_string()];
            v.extend(extra.iter().map(|s| s.to_string()));
            v
        };
        let plain = render_unit(InstallRole::Controller, &argv(&[]));
        assert!(!plain.contains("Delegate="), "{plain}");
        assert!(
            plain.contains("ExecStart=/bin/mkectl controller\n"),
            "{plain}"
        );
        let single = render_unit(InstallRole::Controller, &argv(&["--enable-worker"]));
        assert!(
            single.contains("ExecStart=/bin/mkectl controller --enable-worker\n# --enable-worker"),
            "{single}"
        );
        assert_eq!(single.matches("Delegate=yes").count(), 1);
        assert!(single.contains("ExecStartPre=-/sbin/modprobe br_netfilter"));
        assert!(single.contains("KillMode=mixed"));
    }
}
