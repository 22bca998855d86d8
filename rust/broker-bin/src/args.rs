//! The command line of `vmnet-rs-broker`: the same flags as `vmnet-rs
//! broker` (docs/packaging.md lists them), parsed by hand so the executable
//! needs no argument-parsing crate.

use std::path::PathBuf;

/// What the command line asked for.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Args {
    /// YAML configuration, resolved by Python at start.
    pub config: Option<PathBuf>,
    /// Already-resolved configuration (`vmnet-rs networks resolve` output): no Python.
    pub config_json: Option<PathBuf>,
    /// Linux: the socket to serve.
    pub socket: Option<PathBuf>,
    /// Records of what the backend made, and the last good configuration.
    pub state_dir: Option<PathBuf>,
    /// The address records (they outlast a reboot).
    pub data_dir: Option<PathBuf>,
    /// Seconds; given explicitly, the broker also exits when idle.
    pub idle_timeout: Option<u64>,
    /// Directory of the per-network endpoint sockets.
    pub endpoint_dir: Option<PathBuf>,
    /// Serve no per-network endpoint sockets.
    pub no_endpoints: bool,
    /// macOS: the Mach service to serve.
    pub mach_service: Option<String>,
    /// The Python that resolves `--config`.
    pub python: Option<PathBuf>,
    /// macOS: a code-signing requirement every caller must satisfy.
    pub code_signing_requirement: Option<String>,
    /// macOS before 26.2: Lima's CDHash rule for serialization requests.
    pub lima_cdhash_rule: bool,
    /// Tests: the in-process hub instead of the platform's networks.
    pub backend: Option<String>,
    /// Seconds between monitor passes (tests use less than the default 1 s).
    pub monitor_interval: Option<f64>,
    /// -v: info, -vv: debug.
    pub verbose: u8,
    pub help: bool,
    pub version: bool,
}

pub const USAGE: &str = "\
usage: vmnet-rs-broker [options]

The vmnet-rs broker as a native executable (no Python inside). It serves
until stopped (SIGTERM, SIGINT, the shutdown command), or until idle when
started on demand or given --idle-timeout.

options:
  --config FILE                  networks and broker settings (YAML), resolved at
                                 start by `PYTHON -m vmnet_rs networks resolve FILE`
  --config-json FILE             an already-resolved configuration (JSON); no Python
  --python PATH                  the Python for --config (default: python3 or python
                                 beside this executable, else python3 on PATH)
  --socket PATH                  Linux: the socket to serve (default: $VMNET_RS_SOCKET,
                                 the config's socket, /run/vmnet-rs/broker.sock)
  --state-dir DIR                backend records and the last good configuration
                                 (default: $VMNET_RS_STATE_DIR, else /run/vmnet-rs/state)
  --data-dir DIR                 the address records, kept across reboots (default:
                                 $VMNET_RS_DATA_DIR, the config's dataDir, a chosen
                                 state directory, /var/lib/vmnet-rs for root, else
                                 ~/.local/share/vmnet-rs; docs/config.md)
  --idle-timeout SECONDS         tear idle networks down and exit when idle (0: never)
  --endpoint-dir DIR             per-network endpoint sockets (docs/endpoints.md; default:
                                 the config's endpointDir, else the broker socket's
                                 directory on Linux, a per-user folder on macOS)
  --no-endpoints                 serve no per-network endpoint sockets
  --mach-service NAME            macOS: the Mach service to serve
  --code-signing-requirement R   macOS: a requirement every caller must satisfy
  --lima-cdhash-rule             macOS before 26.2: Lima's serialization rule
  -v, -vv                        log info / debug to stderr
  -h, --help                     this text
  --version                      print the version
";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ArgsError {
    #[error("{0} needs a value (see --help)")]
    MissingValue(String),
    #[error("{flag}: {value:?} is not {expected}")]
    BadValue { flag: String, value: String, expected: &'static str },
    #[error("unknown option {0:?} (see --help)")]
    Unknown(String),
}

impl Args {
    /// Parses the arguments after the program name. `--flag=value` and
    /// `--flag value` both work.
    pub fn parse<I: IntoIterator<Item = String>>(argv: I) -> Result<Args, ArgsError> {
        let mut a = Args::default();
        let mut it = argv.into_iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_owned(), Some(v.to_owned())),
                _ => (arg.clone(), None),
            };
            let value = |it: &mut I::IntoIter| inline.clone().or_else(|| it.next()).ok_or_else(|| ArgsError::MissingValue(flag.clone()));
            match flag.as_str() {
                "--config" => a.config = Some(value(&mut it)?.into()),
                "--config-json" => a.config_json = Some(value(&mut it)?.into()),
                "--socket" => a.socket = Some(value(&mut it)?.into()),
                "--state-dir" => a.state_dir = Some(value(&mut it)?.into()),
                "--data-dir" => a.data_dir = Some(value(&mut it)?.into()),
                "--endpoint-dir" => a.endpoint_dir = Some(value(&mut it)?.into()),
                "--mach-service" | "--mach-service-name" => a.mach_service = Some(value(&mut it)?),
                "--python" => a.python = Some(value(&mut it)?.into()),
                "--code-signing-requirement" => a.code_signing_requirement = Some(value(&mut it)?),
                "--backend" => a.backend = Some(value(&mut it)?),
                "--idle-timeout" => {
                    let v = value(&mut it)?;
                    a.idle_timeout = Some(v.parse().map_err(|_| ArgsError::BadValue { flag: flag.clone(), value: v, expected: "a whole number of seconds >= 0" })?);
                }
                "--monitor-interval" => {
                    let v = value(&mut it)?;
                    let secs: f64 = v.parse().ok().filter(|s: &f64| *s > 0.0 && *s < 3600.0).ok_or_else(|| ArgsError::BadValue {
                        flag: flag.clone(),
                        value: v.clone(),
                        expected: "a number of seconds in (0, 3600)",
                    })?;
                    a.monitor_interval = Some(secs);
                }
                "--lima-cdhash-rule" => a.lima_cdhash_rule = true,
                "--no-endpoints" => a.no_endpoints = true,
                "-v" | "--verbose" => a.verbose += 1,
                "-vv" => a.verbose += 2,
                "-h" | "--help" => a.help = true,
                "--version" => a.version = true,
                _ => return Err(ArgsError::Unknown(arg)),
            }
        }
        Ok(a)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, ArgsError> {
        Args::parse(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn flags_mirror_the_python_command() {
        let a = parse(&["--config", "/etc/n.yaml", "--socket=/run/x.sock", "--idle-timeout", "30", "-vv", "--lima-cdhash-rule", "--mach-service-name", "io.x"]).unwrap();
        assert_eq!(a.config, Some(PathBuf::from("/etc/n.yaml")));
        assert_eq!(a.socket, Some(PathBuf::from("/run/x.sock")));
        assert_eq!(a.idle_timeout, Some(30));
        assert_eq!(a.verbose, 2);
        assert!(a.lima_cdhash_rule);
        assert_eq!(a.mach_service.as_deref(), Some("io.x"));
    }

    #[test]
    fn bad_input_names_the_flag() {
        assert_eq!(parse(&["--config"]), Err(ArgsError::MissingValue("--config".into())));
        assert_eq!(parse(&["--frob"]), Err(ArgsError::Unknown("--frob".into())));
        let e = parse(&["--idle-timeout", "-3"]).unwrap_err().to_string();
        assert_eq!(e, "--idle-timeout: \"-3\" is not a whole number of seconds >= 0");
        assert!(parse(&["--monitor-interval", "0"]).is_err());
    }
}
