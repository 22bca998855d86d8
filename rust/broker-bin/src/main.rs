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

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use vmnet_rs::broker::{Backend, Broker, BrokerOptions};

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
    let options = options(args)?;
    if options.backend == Backend::Platform {
        vmnet_rs::vmnet::preflight::require().map_err(|e| (EXIT_FAILED, e.to_string()))?;
    }
    let broker = start(args, options).map_err(|e| (EXIT_FAILED, e.to_string()))?;
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

/// The broker's options from the flags and the configuration.
fn options(args: &Args) -> Result<BrokerOptions, (u8, String)> {
    let mut o = BrokerOptions::new();
    if let Some(b) = &args.backend {
        o.backend = Backend::parse(b).ok_or_else(|| (EXIT_USAGE, format!("--backend: unknown backend {b:?} (platform or hub)")))?;
    }
    o.backend_options.state_dir = args.state_dir.clone().unwrap_or_else(default_state_dir);
    let resolved = match (&args.config_json, &args.config) {
        (Some(_), Some(_)) => return Err((EXIT_USAGE, "give --config or --config-json, not both".into())),
        (Some(json), None) => config_source::from_json_file(json),
        (None, config) => {
            let exe_dir = std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_owned));
            let python = config_source::find_python(args.python.as_deref(), exe_dir.as_deref());
            let config = config.as_ref().map(|c| std::path::absolute(c).unwrap_or_else(|_| c.clone()));
            config_source::resolve(&python, config.as_deref(), &o.backend_options.state_dir)
        }
    }
    .map_err(|e| (EXIT_USAGE, e.to_string()))?;
    log::info!("configuration: {} ({} networks)", resolved.source, resolved.file.networks.len());
    // Named in the policy's refusals ("network X is not defined in FILE").
    o.config_source = (resolved.source != "built-in defaults").then(|| resolved.source.clone());
    o.settings = resolved.file.broker;
    o.networks = resolved.file.networks;
    o.config_error = resolved.error;
    if let Some(t) = args.idle_timeout {
        o.settings.idle_timeout = t;
        // Given on the command line: exit when idle even if started by hand.
        o.exit_when_idle = true;
    }
    if let Some(m) = args.monitor_interval {
        o.monitor_interval = Duration::from_secs_f64(m);
    }
    o.code_signing_requirement = args.code_signing_requirement.clone();
    o.lima_serialization_rule = args.lima_cdhash_rule;
    // Endpoints on unless --no-endpoints, as `vmnet-rs broker`: --endpoint-dir,
    // else the configuration's endpointDir, else the platform's default.
    if args.no_endpoints {
        if args.endpoint_dir.is_some() {
            return Err((EXIT_USAGE, "--endpoint-dir and --no-endpoints contradict each other: give one".into()));
        }
    } else {
        let configured = Some(PathBuf::from(&o.settings.endpoint_dir)).filter(|p| !p.as_os_str().is_empty());
        let default = vmnet_rs::broker::endpoints::default_dir(&socket_path(args, &o));
        o.endpoint_dir = Some(args.endpoint_dir.clone().or(configured).unwrap_or(default));
    }
    #[cfg(target_os = "linux")]
    if std::env::var_os(vmnet_rs::vmnet::linux::RESOLV_FILE_ENV).is_none() && Path::new(HOST_RESOLV_FILE).exists() {
        // The DNS proxy forwards to the host's resolvers unless told
        // otherwise, as `vmnet-rs broker` does. No thread runs yet.
        std::env::set_var(vmnet_rs::vmnet::linux::RESOLV_FILE_ENV, HOST_RESOLV_FILE);
    }
    Ok(o)
}

#[cfg(target_os = "linux")]
const HOST_RESOLV_FILE: &str = "/etc/resolv.conf";

/// $VMNET_RS_STATE_DIR (as `vmnet-rs broker` and `vmnet-rs leases`), else
/// Linux: /run/vmnet-rs/state; macOS: ~/Library/Application Support/vmnet-rs/state.
fn default_state_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("VMNET_RS_STATE_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    #[cfg(target_os = "macos")]
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join("Library/Application Support/vmnet-rs/state");
    }
    BrokerOptions::new().backend_options.state_dir
}

/// Linux: the broker socket: --socket, else $VMNET_RS_SOCKET, else the
/// configuration's socket. macOS: none (the endpoint default ignores it).
fn socket_path(args: &Args, options: &BrokerOptions) -> PathBuf {
    #[cfg(target_os = "linux")]
    {
        use vmnet_rs::xpc::unix::SOCKET_ENV;
        let env_set = std::env::var_os(SOCKET_ENV).is_some_and(|v| !v.is_empty());
        match &args.socket {
            Some(p) => p.clone(),
            None if env_set => vmnet_rs::xpc::unix::socket_path(None),
            None => PathBuf::from(&options.settings.socket),
        }
    }
    #[cfg(not(target_os = "linux"))]
    {
        let _ = (args, options);
        PathBuf::new()
    }
}

#[cfg(target_os = "linux")]
fn start(args: &Args, options: BrokerOptions) -> Result<Broker, vmnet_rs::broker::Error> {
    use vmnet_rs::xpc::unix::Socket;
    if args.mach_service.is_some() {
        log::warn!("--mach-service: Mach services exist only on macOS; serving the Unix socket");
    }
    let path = socket_path(args, &options);
    Broker::start_unix(options, Socket::open(&path)?)
}

#[cfg(target_os = "macos")]
fn start(args: &Args, options: BrokerOptions) -> Result<Broker, vmnet_rs::broker::Error> {
    let service = args.mach_service.clone().unwrap_or_else(|| options.settings.mach_service.clone());
    Broker::start_mach(options, &service)
}
