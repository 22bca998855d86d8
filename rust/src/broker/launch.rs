//! One launch: every start-up default and path of a broker, decided once
//! for the native executable (`rust/broker-bin`) and `vmnet_rs.Broker`
//! (`rust/src/python/broker.rs`), which both call [`launch`] and
//! [`Launch::start`].
//!
//! What is decided here, first given wins:
//! - the socket (Linux): the caller's, `$VMNET_RS_SOCKET`, the
//!   configuration's `socket`;
//! - the Mach service (macOS): the caller's, the configuration's `machService`;
//! - the state directory: the caller's, `$VMNET_RS_STATE_DIR`, on macOS
//!   `~/Library/Application Support/vmnet-rs/state`, else `/run/vmnet-rs/state`;
//! - the data directory, where the address records live (they outlast a
//!   reboot; the state directory may be a tmpfs): the caller's,
//!   `$VMNET_RS_DATA_DIR`, the configuration's `dataDir`, the state
//!   directory when the caller or `$VMNET_RS_STATE_DIR` chose one (what is
//!   kept together stays together), else the platform's: macOS
//!   `~/Library/Application Support/vmnet-rs`; Linux `/var/lib/vmnet-rs` for
//!   root, else `$XDG_DATA_HOME/vmnet-rs` or `~/.local/share/vmnet-rs`;
//!   records found in the state directory are moved there on first start
//!   (`broker::records::Records`);
//! - the endpoint directory (when endpoints are on): the caller's, the
//!   configuration's `endpointDir`, [`endpoints::default_dir`];
//! - the DNS proxy's upstream (Linux, when the caller asks for the host's):
//!   `$VMNET_RS_DNS_RESOLV_FILE` if set (empty: none), else
//!   `/etc/resolv.conf` if it exists;
//! - idle exit: when asked, else exactly when an idle timeout was given;
//! - activation (a socket handed over by systemd or launchd) is taken by
//!   [`Launch::start`] through the transport.
//!
//! Pure decisions apart from reading the environment and, in
//! [`Launch::start`], binding the socket; any thread.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{endpoints, Backend, Broker, BrokerOptions, Error};
use crate::config::FileConfig;

/// The environment variable naming the state directory (the broker, `vmnet-rs leases`).
pub const STATE_DIR_ENV: &str = "VMNET_RS_STATE_DIR";
/// The environment variable naming the data directory (the address records).
pub const DATA_DIR_ENV: &str = "VMNET_RS_DATA_DIR";
/// The data directory of a broker run by root on Linux when nothing names one.
pub const SYSTEM_DATA_DIR: &str = "/var/lib/vmnet-rs";
/// The state directory when nothing names one (Linux; macOS uses the user's
/// Library when `$HOME` is set).
pub const DEFAULT_STATE_DIR: &str = "/run/vmnet-rs/state";
/// The host's own resolvers, the DNS proxy's upstream when a broker asks for
/// the host's DNS and the environment does not choose.
pub const HOST_RESOLV_FILE: &str = "/etc/resolv.conf";
/// Longest monitor interval accepted, in seconds (exclusive).
pub const MONITOR_INTERVAL_MAX_SECS: f64 = 3600.0;

/// What a caller of a broker gave; `None` (or `false`) takes the default.
#[derive(Clone, Debug, Default)]
pub struct LaunchArgs {
    /// The whole configuration (`None`: the built-in networks and default settings).
    pub config: Option<FileConfig>,
    /// The file the configuration came from, named in refusals.
    pub config_source: Option<String>,
    /// Why the configuration could not be used (the broker serves its last good one).
    pub config_error: Option<String>,
    pub socket: Option<PathBuf>,
    pub mach_service: Option<String>,
    pub state_dir: Option<PathBuf>,
    /// Where the address records live (`None`: see [`data_dir`]).
    pub data_dir: Option<PathBuf>,
    /// Seconds, 0 = never; given, the broker also exits when idle (unless
    /// `exit_when_idle` says otherwise).
    pub idle_timeout: Option<u64>,
    pub exit_when_idle: Option<bool>,
    /// `platform` (or `auto`) or `hub`; `None`: platform.
    pub backend: Option<String>,
    /// Seconds between monitor passes; `None`: 1 s.
    pub monitor_interval: Option<f64>,
    pub code_signing_requirement: Option<String>,
    pub lima_serialization_rule: bool,
    /// Serve each configured network's endpoint sockets.
    pub endpoints: bool,
    pub endpoint_dir: Option<PathBuf>,
    /// Point the DNS proxy at the host's resolvers unless the environment
    /// chose (the broker commands do; the library's default is none).
    pub host_dns: bool,
}

/// Why a launch cannot go ahead: the arguments contradict or name nothing valid.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum LaunchError {
    #[error("unknown backend {0:?} (platform or hub)")]
    Backend(String),
    #[error("monitor interval {0} must be in (0, 3600) seconds")]
    MonitorInterval(f64),
    #[error("an endpoint directory was given with endpoints off: turn endpoints on or leave the directory out")]
    EndpointDirWithoutEndpoints,
}

/// A broker ready to start: its options and where it will serve.
#[derive(Clone)]
pub struct Launch {
    pub options: BrokerOptions,
    /// The socket path (Linux) or Mach service (macOS) it serves.
    pub endpoint: String,
    /// The DNS proxy's upstream file this launch sets, if any (Linux).
    pub dns_resolv_file: Option<PathBuf>,
}

/// The state directory: `explicit`, else `$VMNET_RS_STATE_DIR`, else the
/// platform's (macOS: `~/Library/Application Support/vmnet-rs/state`;
/// elsewhere [`DEFAULT_STATE_DIR`]).
pub fn state_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_owned();
    }
    if let Some(dir) = std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    #[cfg(target_os = "macos")]
    if let Some(home) = std::env::var_os("HOME") {
        return PathBuf::from(home).join("Library/Application Support/vmnet-rs/state");
    }
    PathBuf::from(DEFAULT_STATE_DIR)
}

/// The state directory if the caller or `$VMNET_RS_STATE_DIR` chose one.
fn chosen_state_dir(explicit: Option<&Path>) -> Option<PathBuf> {
    explicit.map(Path::to_owned).or_else(|| std::env::var_os(STATE_DIR_ENV).filter(|d| !d.is_empty()).map(PathBuf::from))
}

/// Where a broker keeps what outlasts a reboot (the address records), from
/// this process's environment: see [`data_dir_for`].
pub fn data_dir(explicit: Option<&Path>, configured: &str, state_dir: Option<&Path>) -> PathBuf {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    let place = Place {
        macos: cfg!(target_os = "macos"),
        root: nix::unistd::geteuid().is_root(),
        home: env("HOME"),
        xdg_data_home: env("XDG_DATA_HOME"),
    };
    data_dir_for(explicit, env(DATA_DIR_ENV).as_deref(), configured, chosen_state_dir(state_dir).as_deref(), &place)
}

/// Who and where a broker runs, for [`data_dir_for`].
#[derive(Clone, Debug, Default)]
pub struct Place {
    pub macos: bool,
    /// Run by root (the system broker).
    pub root: bool,
    pub home: Option<PathBuf>,
    pub xdg_data_home: Option<PathBuf>,
}

/// The data directory, first given wins: `explicit`, `env`
/// (`$VMNET_RS_DATA_DIR`), `configured` (the configuration's `dataDir`,
/// empty: none), `chosen_state` (a state directory the caller or the
/// environment chose), else the platform's: macOS `~/Library/Application
/// Support/vmnet-rs`; elsewhere [`SYSTEM_DATA_DIR`] for root, else
/// `$XDG_DATA_HOME/vmnet-rs`, `~/.local/share/vmnet-rs`, and without a home
/// [`SYSTEM_DATA_DIR`].
pub fn data_dir_for(explicit: Option<&Path>, env: Option<&Path>, configured: &str, chosen_state: Option<&Path>, place: &Place) -> PathBuf {
    if let Some(d) = explicit.or(env) {
        return d.to_owned();
    }
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    if let Some(d) = chosen_state {
        return d.to_owned();
    }
    if place.macos {
        if let Some(home) = &place.home {
            return home.join("Library/Application Support/vmnet-rs");
        }
    } else if !place.root {
        if let Some(x) = &place.xdg_data_home {
            return x.join("vmnet-rs");
        }
        if let Some(home) = &place.home {
            return home.join(".local/share/vmnet-rs");
        }
    }
    PathBuf::from(SYSTEM_DATA_DIR)
}

/// The socket (Linux): `explicit`, else `$VMNET_RS_SOCKET`, else `configured`
/// (the configuration's `socket`).
pub fn socket_path(explicit: Option<&Path>, configured: &str) -> PathBuf {
    use crate::xpc::SOCKET_ENV;
    if let Some(p) = explicit {
        return p.to_owned();
    }
    match std::env::var_os(SOCKET_ENV).filter(|v| !v.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(configured),
    }
}

/// The endpoint directory: `explicit`, else `configured` (the
/// configuration's `endpointDir`, empty: none), else the platform default
/// for a broker on `socket`.
pub fn endpoint_dir(explicit: Option<&Path>, configured: &str, socket: &Path) -> PathBuf {
    let home = std::env::var_os("HOME").map(PathBuf::from);
    endpoint_dir_for(explicit, configured, socket, cfg!(target_os = "macos"), home.as_deref())
}

/// [`endpoint_dir`] for either platform (`macos`) and a given home, so a
/// plan for a Mac can be made anywhere (`vmnet-rs install --dry-run`).
pub fn endpoint_dir_for(explicit: Option<&Path>, configured: &str, socket: &Path, macos: bool, home: Option<&Path>) -> PathBuf {
    if let Some(d) = explicit {
        return d.to_owned();
    }
    if !configured.is_empty() {
        return PathBuf::from(configured);
    }
    endpoints::default_dir_for(macos, home, socket)
}

/// The DNS proxy's upstream for a broker that asks for the host's: `None`
/// when the environment already chose (set, even empty) or the host has no
/// resolv file.
fn host_dns_default() -> Option<PathBuf> {
    #[cfg(target_os = "linux")]
    {
        use crate::vmnet::linux::RESOLV_FILE_ENV;
        if std::env::var_os(RESOLV_FILE_ENV).is_none() && Path::new(HOST_RESOLV_FILE).exists() {
            return Some(PathBuf::from(HOST_RESOLV_FILE));
        }
    }
    None
}

/// Decides every default of a broker started with `args`.
pub fn launch(args: LaunchArgs) -> Result<Launch, LaunchError> {
    let mut o = BrokerOptions::new();
    if let Some(b) = &args.backend {
        o.backend = Backend::parse(b).ok_or_else(|| LaunchError::Backend(b.clone()))?;
    }
    o.backend_options.state_dir = state_dir(args.state_dir.as_deref());
    if let Some(file) = args.config {
        o.settings = file.broker;
        o.networks = file.networks;
    }
    o.data_dir = Some(data_dir(args.data_dir.as_deref(), &o.settings.data_dir, args.state_dir.as_deref()));
    o.config_source = args.config_source;
    o.config_error = args.config_error;
    if let Some(t) = args.idle_timeout {
        o.settings.idle_timeout = t;
    }
    o.exit_when_idle = args.exit_when_idle.unwrap_or(args.idle_timeout.is_some());
    if let Some(m) = args.monitor_interval {
        if !(m > 0.0 && m < MONITOR_INTERVAL_MAX_SECS) {
            return Err(LaunchError::MonitorInterval(m));
        }
        o.monitor_interval = Duration::from_secs_f64(m);
    }
    o.code_signing_requirement = args.code_signing_requirement;
    o.lima_serialization_rule = args.lima_serialization_rule;
    let socket = socket_path(args.socket.as_deref(), &o.settings.socket);
    if args.endpoints {
        o.endpoint_dir = Some(endpoint_dir(args.endpoint_dir.as_deref(), &o.settings.endpoint_dir, &socket));
    } else if args.endpoint_dir.is_some() {
        return Err(LaunchError::EndpointDirWithoutEndpoints);
    }
    let endpoint = if cfg!(target_os = "macos") {
        args.mach_service.unwrap_or_else(|| o.settings.mach_service.clone())
    } else {
        socket.display().to_string()
    };
    let dns_resolv_file = if args.host_dns { host_dns_default() } else { None };
    Ok(Launch { options: o, endpoint, dns_resolv_file })
}

impl Launch {
    /// Starts serving: the Unix socket (Linux; the one systemd passed, if it
    /// did) or the Mach service (macOS; launchd's), after pointing the DNS
    /// proxy at [`Launch::dns_resolv_file`] if there is one.
    pub fn start(self) -> Result<Broker, Error> {
        #[cfg(target_os = "linux")]
        if let Some(f) = &self.dns_resolv_file {
            // Read by each network's dnsmasq start; set before any network is made.
            std::env::set_var(crate::vmnet::linux::RESOLV_FILE_ENV, f);
        }
        #[cfg(target_os = "linux")]
        return Broker::start_unix(self.options, crate::xpc::unix::Socket::open(Path::new(&self.endpoint))?);
        #[cfg(target_os = "macos")]
        return Broker::start_mach(self.options, &self.endpoint);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_explicit_path_wins_over_every_default() {
        assert_eq!(state_dir(Some(Path::new("/x/state"))), PathBuf::from("/x/state"));
        assert_eq!(socket_path(Some(Path::new("/x/b.sock")), "/y/b.sock"), PathBuf::from("/x/b.sock"));
        assert_eq!(endpoint_dir(Some(Path::new("/x/e")), "/y/e", Path::new("/z/b.sock")), PathBuf::from("/x/e"));
        assert_eq!(endpoint_dir(None, "/y/e", Path::new("/z/b.sock")), PathBuf::from("/y/e"));
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn endpoints_default_to_the_socket_directory_on_linux() {
        assert_eq!(endpoint_dir(None, "", Path::new("/z/b.sock")), PathBuf::from("/z"));
    }

    #[test]
    fn the_data_directory_outlasts_a_reboot_unless_told_otherwise() {
        let root = Place { root: true, home: Some("/root".into()), ..Default::default() };
        let user = Place { home: Some("/home/u".into()), ..Default::default() };
        let mac = Place { macos: true, root: true, home: Some("/Users/u".into()), ..Default::default() };
        let d = |e: Option<&str>, env: Option<&str>, c: &str, s: Option<&str>, p: &Place| {
            data_dir_for(e.map(Path::new), env.map(Path::new), c, s.map(Path::new), p)
        };
        // Nothing chosen: persistent places, never the tmpfs state default.
        assert_eq!(d(None, None, "", None, &root), PathBuf::from("/var/lib/vmnet-rs"));
        assert_eq!(d(None, None, "", None, &user), PathBuf::from("/home/u/.local/share/vmnet-rs"));
        let xdg = Place { xdg_data_home: Some("/x/data".into()), ..user.clone() };
        assert_eq!(d(None, None, "", None, &xdg), PathBuf::from("/x/data/vmnet-rs"));
        assert_eq!(d(None, None, "", None, &mac), PathBuf::from("/Users/u/Library/Application Support/vmnet-rs"));
        assert_eq!(d(None, None, "", None, &Place::default()), PathBuf::from(SYSTEM_DATA_DIR));
        // A chosen state directory keeps its records; the key, the
        // environment and the caller win over it, in that order upwards.
        assert_eq!(d(None, None, "", Some("/t/state"), &root), PathBuf::from("/t/state"));
        assert_eq!(d(None, None, "/srv/v", Some("/t/state"), &root), PathBuf::from("/srv/v"));
        assert_eq!(d(None, Some("/e"), "/srv/v", Some("/t/state"), &root), PathBuf::from("/e"));
        assert_eq!(d(Some("/x"), Some("/e"), "/srv/v", Some("/t/state"), &root), PathBuf::from("/x"));
    }

    #[test]
    fn contradictions_are_refused() {
        let args = LaunchArgs { endpoint_dir: Some("/e".into()), ..Default::default() };
        assert_eq!(launch(args).err(), Some(LaunchError::EndpointDirWithoutEndpoints));
        let args = LaunchArgs { backend: Some("cloud".into()), ..Default::default() };
        assert_eq!(launch(args).err(), Some(LaunchError::Backend("cloud".into())));
        let args = LaunchArgs { monitor_interval: Some(0.0), ..Default::default() };
        assert_eq!(launch(args).err(), Some(LaunchError::MonitorInterval(0.0)));
    }

    #[test]
    fn an_idle_timeout_given_means_exit_when_idle_unless_told_otherwise() {
        let l = launch(LaunchArgs { idle_timeout: Some(5), ..Default::default() }).unwrap();
        assert!(l.options.exit_when_idle);
        assert_eq!(l.options.settings.idle_timeout, 5);
        let l = launch(LaunchArgs { idle_timeout: Some(5), exit_when_idle: Some(false), ..Default::default() }).unwrap();
        assert!(!l.options.exit_when_idle);
        assert!(!launch(LaunchArgs::default()).unwrap().options.exit_when_idle);
    }

    #[test]
    fn endpoints_on_always_get_a_directory() {
        let l = launch(LaunchArgs { endpoints: true, socket: Some("/s/b.sock".into()), ..Default::default() }).unwrap();
        assert!(l.options.endpoint_dir.is_some());
        assert!(launch(LaunchArgs::default()).unwrap().options.endpoint_dir.is_none());
    }
}
