//! `vmnet-rs-broker`: the vmnet-rs broker as a native executable, with no
//! Python interpreter inside. It is what launchd (macOS, the signed binary
//! carrying the virtualization entitlement) and systemd (Linux) start; the
//! flags are those of `vmnet-rs broker` (docs/packaging.md).
//!
//! Start: parse flags, block SIGTERM/SIGINT, read the configuration
//! (`config_source.rs`: Python resolves the YAML, or `--config-json`), check
//! the platform's preconditions (`vmnet::preflight`), serve the Unix socket
//! (Linux, or the one systemd passed) or the Mach service (macOS), print the
//! start line, and wait. A signal, the shutdown command or idle exit stops
//! it; every network is torn down before it exits.
//!
//! Exit codes: 0 stopped normally (SIGTERM, shutdown, idle), 1 could not
//! start, 2 bad flags or configuration, 130 interrupted (Ctrl-C, SIGINT).

mod args;
mod config_source;
mod logger;
mod signals;

use std::path::Path;
use std::process::ExitCode;

use vmnet_rs::broker::launch::{self, Launch, LaunchArgs, LaunchError};
use vmnet_rs::broker::Backend;

use args::{Args, USAGE};

const EXIT_FAILED: u8 = 1;
const EXIT_USAGE: u8 = 2;
const EXIT_INTERRUPTED: u8 = 130;

fn main() -> ExitCode {
    let args = match Args::parse(std::env::args().skip(1)) {
        Ok(a) => a,
        Err(e) => return fail(EXIT_USAGE, &e.to_string()),
    };
    if args.help {
        print!("{USAGE}");
        return ExitCode::SUCCESS;
    }
    if args.version {
        println!("vmnet-rs-broker {}", vmnet_rs::VERSION);
        return ExitCode::SUCCESS;
    }
    logger::init(args.verbose);
    // Before any thread starts, so every thread inherits the mask.
    if let Err(e) = signals::block() {
        return fail(EXIT_FAILED, &format!("block SIGTERM and SIGINT: {e}"));
    }
    match run(&args) {
        Ok(reason) => {
            eprintln!("vmnet-rs: broker stopped: {reason}");
            // Ctrl-C exits 130 as `vmnet-rs broker` does; SIGTERM (the
            // service manager's stop) and the broker's own stops exit 0.
            if reason == signals::INTERRUPTED {
                ExitCode::from(EXIT_INTERRUPTED)
            } else {
                ExitCode::SUCCESS
            }
        }
        Err((code, message)) => fail(code, &message),
    }
}

fn fail(code: u8, message: &str) -> ExitCode {
    for line in message.lines() {
        eprintln!("vmnet-rs-broker: {line}");
    }
    ExitCode::from(code)
}

fn run(args: &Args) -> Result<String, (u8, String)> {
    let launch = launch(args)?;
    if launch.options.backend == Backend::Platform {
        vmnet_rs::vmnet::preflight::require().map_err(|e| (EXIT_FAILED, e.to_string()))?;
    }
    if args.mach_service.is_some() && !cfg!(target_os = "macos") {
        log::warn!("--mach-service: Mach services exist only on macOS; serving the Unix socket");
    }
    let broker = launch.start().map_err(|e| (EXIT_FAILED, e.to_string()))?;
    signals::forward_to(broker.core().clone()).map_err(|e| (EXIT_FAILED, format!("start the signal thread: {e}")))?;
    eprintln!("{}", broker.start_line());
    for (network, paths) in broker.core().endpoint_paths() {
        // In the order `vmnet-rs broker` prints them: stream, then datagram.
        let mut listed: Vec<(&str, String)> = paths.iter().map(|(kind, p)| (kind.as_str(), p.display().to_string())).collect();
        listed.sort_by(|a, b| b.0.cmp(a.0));
        let listed: Vec<String> = listed.into_iter().map(|(kind, p)| format!("{kind} {p}")).collect();
        eprintln!("vmnet-rs: network {network}: {}", listed.join(", "));
    }
    let reason = broker.wait(None).unwrap_or_else(|| "stopped".into());
    broker.stop();
    Ok(reason)
}

/// The broker's launch (`broker::launch`, shared with `vmnet_rs.Broker`)
/// from the flags and the configuration.
fn launch(args: &Args) -> Result<Launch, (u8, String)> {
    if args.no_endpoints && args.endpoint_dir.is_some() {
        return Err((EXIT_USAGE, "--endpoint-dir and --no-endpoints contradict each other: give one".into()));
    }
    // Decided first: the configuration's last good copy is kept there.
    let state_dir = launch::state_dir(args.state_dir.as_deref());
    let resolved = match (&args.config_json, &args.config) {
        (Some(_), Some(_)) => return Err((EXIT_USAGE, "give --config or --config-json, not both".into())),
        (Some(json), None) => config_source::from_json_file(json),
        (None, config) => {
            let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_owned));
            let python = config_source::find_python(args.python.as_deref(), exe_dir.as_deref());
            let config = config.as_ref().map(|c| std::path::absolute(c).unwrap_or_else(|_| c.clone()));
            config_source::resolve(&python, config.as_deref(), &state_dir)
        }
    }
    .map_err(|e| (EXIT_USAGE, e.to_string()))?;
    log::info!("configuration: {} ({} networks)", resolved.source, resolved.file.networks.len());
    let launch_args = LaunchArgs {
        // Named in the policy's refusals ("network X is not defined in FILE").
        config_source: (resolved.source != "built-in defaults").then(|| resolved.source.clone()),
        config: Some(resolved.file),
        config_error: resolved.error,
        socket: args.socket.clone(),
        mach_service: args.mach_service.clone(),
        // As given: a state directory the caller chose keeps the records too.
        state_dir: args.state_dir.clone(),
        data_dir: args.data_dir.clone(),
        idle_timeout: args.idle_timeout,
        exit_when_idle: None,
        backend: args.backend.clone(),
        monitor_interval: args.monitor_interval,
        code_signing_requirement: args.code_signing_requirement.clone(),
        lima_serialization_rule: args.lima_cdhash_rule,
        // Endpoints on unless --no-endpoints, as `vmnet-rs broker`.
        endpoints: !args.no_endpoints,
        endpoint_dir: args.endpoint_dir.clone(),
        // The DNS proxy forwards to the host's resolvers unless told otherwise.
        host_dns: true,
    };
    launch::launch(launch_args).map_err(|e| match e {
        LaunchError::Backend(b) => (EXIT_USAGE, format!("--backend: unknown backend {b:?} (platform or hub)")),
        other => (EXIT_USAGE, other.to_string()),
    })
}
