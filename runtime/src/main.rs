//! skiff-runc: runc's command line over the skiff-runtime library. This file only parses flags,
//! sets up logging and maps results to runc's output and exit codes.

use clap::{Parser, Subcommand};
use skiff_runtime::container::DEFAULT_ROOT;
use skiff_runtime::log::{Format, LogLayer};
use skiff_runtime::state::Status;
use skiff_runtime::{CreateOptions, Runtime, features, sealed_exe, spec_template};
use std::io::Write;
use std::path::PathBuf;
use tracing_subscriber::layer::SubscriberExt;

/// `println!` that never panics: a reader that has gone away (`skiff-runc state ID | grep -q`)
/// ends the command quietly, as SIGPIPE ends runc; another write error is reported.
macro_rules! out {
    ($($arg:tt)*) => {
        print_line(format_args!($($arg)*))
    };
}

fn print_line(line: std::fmt::Arguments) {
    let mut stdout = std::io::stdout().lock();
    if let Err(e) = writeln!(stdout, "{line}").and_then(|()| stdout.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(128 + libc::SIGPIPE);
        }
        eprintln!("write to stdout: {e}");
        std::process::exit(1);
    }
}

#[derive(Parser, Debug, PartialEq)]
#[command(
    name = "skiff-runc",
    version,
    about = "An OCI runtime with runc's command line"
)]
struct Cli {
    /// Root directory for container state.
    #[arg(long, global = true, default_value = DEFAULT_ROOT)]
    root: PathBuf,
    /// Log file (default: stderr).
    #[arg(long, global = true)]
    log: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long = "log-format", global = true, default_value = "text")]
    log_format: String,
    #[arg(long, global = true)]
    debug: bool,
    /// Accepted for compatibility; systemd cgroup management is not supported.
    #[arg(long = "systemd-cgroup", global = true)]
    systemd_cgroup: bool,
    /// Accepted for compatibility (true, false or auto).
    #[arg(long = "rootless")]
    rootless: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args, Debug, PartialEq)]
struct CreateArgs {
    /// Path to the bundle directory.
    #[arg(short, long, default_value = ".")]
    bundle: PathBuf,
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    #[arg(long = "no-pivot")]
    no_pivot: bool,
    #[arg(long = "no-new-keyring")]
    no_new_keyring: bool,
    #[arg(
        long = "preserve-fds",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    preserve_fds: i32,
    id: String,
}

impl CreateArgs {
    fn options(&self) -> anyhow::Result<CreateOptions> {
        Ok(CreateOptions {
            bundle: self.bundle.clone(),
            console_socket: self.console_socket.clone(),
            pid_file: self.pid_file.clone(),
            no_pivot: self.no_pivot,
            preserve_fds: preserve_fds(self.preserve_fds)?,
        })
    }
}

/// `--preserve-fds N` counts descriptors after stdio; a negative count would wrap around.
fn preserve_fds(n: i32) -> anyhow::Result<u32> {
    u32::try_from(n).map_err(|_| {
        anyhow::anyhow!("--preserve-fds: {n} is negative (it counts the descriptors after stdio)")
    })
}

#[derive(Subcommand, Debug, PartialEq)]
enum Command {
    /// Create a container, leaving its process waiting for `start`.
    Create(CreateArgs),
    /// Start the user's process of a created container.
    Start { id: String },
    /// Create and start a container, and wait for it unless --detach.
    Run {
        #[command(flatten)]
        create: CreateArgs,
        #[arg(short, long)]
        detach: bool,
    },
    /// Print the state of a container as JSON.
    State { id: String },
    /// Send a signal (name or number, default SIGTERM) to the container's init.
    Kill {
        #[arg(short, long)]
        all: bool,
        id: String,
        signal: Option<String>,
    },
    /// Delete a container's resources.
    Delete {
        #[arg(short, long)]
        force: bool,
        id: String,
    },
    /// List containers.
    List {
        #[arg(short, long, default_value = "table")]
        format: String,
        #[arg(short, long)]
        quiet: bool,
    },
    /// List the processes of a container.
    Ps {
        #[arg(short, long, default_value = "table")]
        format: String,
        id: String,
        /// Arguments for ps(1) (default -ef).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        ps_args: Vec<String>,
    },
    /// Write a default config.json.
    Spec {
        #[arg(short, long, default_value = ".")]
        bundle: PathBuf,
        #[arg(long)]
        rootless: bool,
    },
    /// Print the features this runtime implements as JSON.
    Features,
    /// Run another process in a running container.
    Exec(ExecArgs),
    /// Freeze every process of a container.
    Pause { id: String },
    /// Thaw a paused container.
    Resume { id: String },
    /// Print the container's stats (--stats) or stream stats and OOM events.
    Events {
        #[arg(long)]
        stats: bool,
        /// Interval between stats events, e.g. 5s, 500ms.
        #[arg(long, default_value = "5s")]
        interval: String,
        id: String,
    },
    /// Change the resource limits of a running container.
    Update(UpdateArgs),
}

#[derive(clap::Args, Debug, PartialEq)]
struct ExecArgs {
    #[arg(long = "console-socket")]
    console_socket: Option<PathBuf>,
    #[arg(long)]
    cwd: Option<PathBuf>,
    #[arg(short, long = "env")]
    env: Vec<String>,
    #[arg(short, long)]
    tty: bool,
    /// uid[:gid]
    #[arg(short, long)]
    user: Option<String>,
    #[arg(short = 'g', long = "additional-gids")]
    additional_gids: Vec<u32>,
    /// A process.json (the "process" object of config.json).
    #[arg(short, long)]
    process: Option<PathBuf>,
    #[arg(short, long)]
    detach: bool,
    #[arg(long = "pid-file")]
    pid_file: Option<PathBuf>,
    /// Accepted for compatibility; no SELinux here.
    #[arg(long = "process-label")]
    process_label: Option<String>,
    /// Accepted for compatibility; no AppArmor here.
    #[arg(short, long)]
    apparmor: Option<String>,
    #[arg(long = "no-new-privs")]
    no_new_privs: bool,
    #[arg(short, long = "cap")]
    cap: Vec<String>,
    #[arg(
        long = "preserve-fds",
        default_value_t = 0,
        allow_negative_numbers = true
    )]
    preserve_fds: i32,
    #[arg(long = "ignore-paused")]
    ignore_paused: bool,
    id: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    args: Vec<String>,
}

#[derive(clap::Args, Debug, PartialEq)]
struct UpdateArgs {
    /// A JSON file with linux.resources ("-" for stdin).
    #[arg(short, long)]
    resources: Option<PathBuf>,
    #[arg(long = "blkio-weight")]
    blkio_weight: Option<u16>,
    #[arg(long = "cpu-period")]
    cpu_period: Option<u64>,
    #[arg(long = "cpu-quota")]
    cpu_quota: Option<i64>,
    #[arg(long = "cpu-rt-period")]
    cpu_rt_period: Option<u64>,
    #[arg(long = "cpu-rt-runtime")]
    cpu_rt_runtime: Option<i64>,
    #[arg(long = "cpu-share")]
    cpu_share: Option<u64>,
    #[arg(long = "cpuset-cpus")]
    cpuset_cpus: Option<String>,
    #[arg(long = "cpuset-mems")]
    cpuset_mems: Option<String>,
    /// Bytes, or with a unit: 512k, 100m, 1g.
    #[arg(long)]
    memory: Option<String>,
    #[arg(long = "memory-reservation")]
    memory_reservation: Option<String>,
    #[arg(long = "memory-swap")]
    memory_swap: Option<String>,
    #[arg(long = "pids-limit")]
    pids_limit: Option<i64>,
    /// Accepted for compatibility; kernel memory limits are gone from current kernels.
    #[arg(long = "kernel-memory")]
    kernel_memory: Option<String>,
    id: String,
}

fn main() {
    // First of all, before any other work that the re-exec would only repeat.
    let sealed = needs_sealed_exe(std::env::args_os().skip(1)).then(sealed_exe::ensure);
    let cli = parse_lifecycle(std::env::args_os().skip(1)).unwrap_or_else(Cli::parse);
    let format = match cli.log_format.as_str() {
        "json" => Format::Json,
        "text" => Format::Text,
        other => {
            eprintln!("invalid --log-format {other:?}: want text or json");
            std::process::exit(1);
        }
    };
    let log_file = cli.log.as_ref().map(|path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .unwrap_or_else(|e| {
                eprintln!("--log {}: {e}", path.display());
                std::process::exit(1);
            })
    });
    let out: Box<dyn Write + Send> = match &log_file {
        Some(f) => Box::new(f.try_clone().expect("dup log fd")),
        None => Box::new(std::io::stderr()),
    };
    let level = if cli.debug {
        tracing::Level::DEBUG
    } else {
        tracing::Level::WARN
    };
    let subscriber = tracing_subscriber::registry()
        .with(tracing_subscriber::filter::LevelFilter::from_level(level))
        .with(LogLayer::new(out, format));
    let _ = tracing::subscriber::set_global_default(subscriber);

    match run(&cli, sealed) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = format!("{e:#}");
            if let Some(mut f) = log_file {
                let _ = f.write_all(skiff_runtime::log::line(format, "error", &msg).as_bytes());
            }
            eprintln!("{msg}");
            std::process::exit(1);
        }
    }
}

/// `sealed`: the outcome of running from a read-only view of our binary, for the commands that
/// start processes in a container (see `needs_sealed_exe`).
fn run(cli: &Cli, sealed: Option<Result<(), String>>) -> anyhow::Result<i32> {
    // CVE-2019-5736: a process that execs a path the container controls must not run from a
    // binary the container could then open for writing through /proc/<pid>/exe.
    let seal = || match &sealed {
        Some(Err(e)) => Err(anyhow::anyhow!("cannot protect the runtime binary: {e}")),
        _ => Ok(()),
    };
    if cli.systemd_cgroup {
        anyhow::bail!("--systemd-cgroup is not supported: skiff-runc manages cgroupfs directly");
    }
    let rt = Runtime::new(&cli.root);
    match &cli.command {
        Command::Create(args) => {
            seal()?;
            rt.create(&args.id, args.options()?)?;
        }
        Command::Start { id } => rt.start(id)?,
        // run protects the binary itself: it may need no re-exec (sealed_exe.rs).
        Command::Run { create, detach } => {
            return Ok(rt.run(&create.id, create.options()?, *detach)?);
        }
        Command::State { id } => {
            let (record, status) = rt.load(id)?;
            out!(
                "{}",
                serde_json::to_string_pretty(&record.oci_state(status))?
            );
        }
        Command::Kill { all, id, signal } => {
            rt.kill(
                id,
                parse_signal(signal.as_deref().unwrap_or("SIGTERM"))?,
                *all,
            )?;
        }
        Command::Delete { force, id } => rt.delete(id, *force)?,
        Command::List { format, quiet } => list(&rt, format, *quiet)?,
        Command::Ps {
            format,
            id,
            ps_args,
        } => ps(&rt, id, format, ps_args)?,
        Command::Spec { bundle, rootless } => {
            let path = bundle.join("config.json");
            if path.exists() {
                anyhow::bail!("File {} exists. Remove it first", path.display());
            }
            let spec = if *rootless {
                spec_template::rootless_spec(
                    nix::unistd::geteuid().as_raw(),
                    nix::unistd::getegid().as_raw(),
                )
            } else {
                spec_template::default_spec()
            };
            std::fs::write(&path, serde_json::to_string_pretty(&spec)? + "\n")?;
        }
        Command::Features => out!("{}", serde_json::to_string_pretty(&features::features())?),
        Command::Exec(args) => {
            seal()?;
            return exec(&rt, args);
        }
        Command::Pause { id } => rt.pause(id)?,
        Command::Resume { id } => rt.resume(id)?,
        Command::Events {
            stats,
            interval,
            id,
        } => {
            if *stats {
                out!("{}", rt.stats(id)?);
            } else {
                let interval = parse_duration(interval)?;
                rt.events(id, interval, &mut |event| {
                    out!("{event}");
                })?;
            }
        }
        Command::Update(args) => rt.update(&args.id, &update_resources(args)?)?,
    }
    Ok(0)
}

/// The command lines sent for every container — create, start, run, state, kill and delete
/// with the options containerd's shim, podman and the kubelet use — read without clap, whose
/// parser is a good share of the code this binary pages in at every container start. Anything
/// else (another command, --help, an option not known here, a repeated one, a short option
/// with its value attached) is `None`, and clap parses the line with its help and errors;
/// `lifecycle_lines_parse_as_clap_does` checks that both read these lines alike.
fn parse_lifecycle(args: impl Iterator<Item = std::ffi::OsString>) -> Option<Cli> {
    let args: Vec<String> = args.map(|a| a.into_string().ok()).collect::<Option<_>>()?;
    let (mut root, mut log, mut log_format, mut rootless) = (None, None, None, None);
    let (mut debug, mut systemd_cgroup) = (false, false);
    let mut command: Option<&str> = None;
    let mut bundle = None;
    let (mut console_socket, mut pid_file, mut preserve_fds) = (None, None, None);
    let (mut no_pivot, mut no_new_keyring, mut switch) = (false, false, false);
    let mut positional: Vec<String> = vec![];
    // A flag given once: a second time is clap's to refuse.
    let set = |flag: &mut bool| (!std::mem::replace(flag, true)).then_some(());
    let mut it = args.iter().map(String::as_str);
    while let Some(arg) = it.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((n, v)) if n.starts_with("--") => (n, Some(v)),
            _ => (arg, None),
        };
        // The option's value: `--name=value` or the next argument (not an option itself).
        let mut value = |allow_negative: bool| -> Option<String> {
            let v = match inline {
                Some(v) => v,
                None => it.next()?,
            };
            let is_option = v.starts_with('-') && !(allow_negative && v.parse::<i32>().is_ok());
            (!is_option && !v.is_empty()).then(|| v.to_string())
        };
        let fill = |slot: &mut Option<String>, v: Option<String>| -> Option<()> {
            slot.replace(v?).is_none().then_some(())
        };
        match (command, name) {
            (_, "--root") => fill(&mut root, value(false))?,
            (_, "--log") => fill(&mut log, value(false))?,
            (_, "--log-format") => fill(&mut log_format, value(false))?,
            (_, "--debug") if inline.is_none() => set(&mut debug)?,
            (_, "--systemd-cgroup") if inline.is_none() => set(&mut systemd_cgroup)?,
            (None, "--rootless") => fill(&mut rootless, value(false))?,
            (None, c @ ("create" | "run" | "start" | "state" | "kill" | "delete")) => {
                command = Some(c)
            }
            (Some("create" | "run"), "-b" | "--bundle") => fill(&mut bundle, value(false))?,
            (Some("create" | "run"), "--console-socket") => {
                fill(&mut console_socket, value(false))?
            }
            (Some("create" | "run"), "--pid-file") => fill(&mut pid_file, value(false))?,
            (Some("create" | "run"), "--preserve-fds") => fill(&mut preserve_fds, value(true))?,
            (Some("create" | "run"), "--no-pivot") if inline.is_none() => set(&mut no_pivot)?,
            (Some("create" | "run"), "--no-new-keyring") if inline.is_none() => {
                set(&mut no_new_keyring)?
            }
            (Some("run"), "-d" | "--detach")
            | (Some("kill"), "-a" | "--all")
            | (Some("delete"), "-f" | "--force")
                if inline.is_none() =>
            {
                set(&mut switch)?
            }
            (Some(_), p) if !p.starts_with('-') => positional.push(p.to_string()),
            _ => return None,
        }
    }
    let create = |id: String| -> Option<CreateArgs> {
        Some(CreateArgs {
            bundle: bundle.clone().unwrap_or_else(|| ".".into()).into(),
            console_socket: console_socket.clone().map(PathBuf::from),
            pid_file: pid_file.clone().map(PathBuf::from),
            no_pivot,
            no_new_keyring,
            preserve_fds: preserve_fds
                .as_deref()
                .map_or(Some(0), |n| n.parse().ok())?,
            id,
        })
    };
    let mut positional = positional.into_iter();
    let (id, extra) = (positional.next()?, positional.next());
    let command = match (command?, extra) {
        ("create", None) => Command::Create(create(id)?),
        ("run", None) => Command::Run {
            create: create(id)?,
            detach: switch,
        },
        ("start", None) => Command::Start { id },
        ("state", None) => Command::State { id },
        ("kill", signal) => Command::Kill {
            all: switch,
            id,
            signal,
        },
        ("delete", None) => Command::Delete { force: switch, id },
        _ => return None,
    };
    if positional.next().is_some() {
        return None;
    }
    Some(Cli {
        root: root.unwrap_or_else(|| DEFAULT_ROOT.into()).into(),
        log: log.map(PathBuf::from),
        log_format: log_format.unwrap_or_else(|| "text".into()),
        debug,
        systemd_cgroup,
        rootless,
        command,
    })
}

/// Whether the command line (without argv[0]) names create or exec: commands whose processes
/// exec into the container (run decides for itself once it has read the config, see
/// `Runtime::run`). Read before clap parses it, so that the re-exec comes first; global
/// options that take a value are stepped over with their value.
fn needs_sealed_exe(args: impl Iterator<Item = std::ffi::OsString>) -> bool {
    let mut args = args;
    while let Some(arg) = args.next() {
        match arg.to_str() {
            Some("--root" | "--log" | "--log-format" | "--rootless") => {
                args.next();
            }
            Some(a) if a.starts_with('-') => {}
            Some(command) => return matches!(command, "create" | "exec"),
            None => return false,
        }
    }
    false
}

fn parse_signal(s: &str) -> anyhow::Result<nix::sys::signal::Signal> {
    use std::str::FromStr;
    if let Ok(n) = s.parse::<i32>() {
        return nix::sys::signal::Signal::try_from(n)
            .map_err(|_| anyhow::anyhow!("unknown signal {s:?}"));
    }
    let upper = s.to_ascii_uppercase();
    let name = if upper.starts_with("SIG") {
        upper
    } else {
        format!("SIG{upper}")
    };
    nix::sys::signal::Signal::from_str(&name).map_err(|_| anyhow::anyhow!("unknown signal {s:?}"))
}

fn owner_name(uid: u32) -> String {
    std::fs::read_to_string("/etc/passwd")
        .ok()
        .and_then(|p| {
            p.lines().find_map(|l| {
                let f: Vec<&str> = l.split(':').collect();
                (f.len() > 2 && f[2].parse() == Ok(uid)).then(|| f[0].to_string())
            })
        })
        .unwrap_or_else(|| format!("#{uid}"))
}

fn list(rt: &Runtime, format: &str, quiet: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let all = rt.list()?;
    let owner = |id: &str| {
        std::fs::metadata(rt.root.join(id))
            .map(|m| owner_name(m.uid()))
            .unwrap_or_default()
    };
    if quiet {
        for (r, _) in &all {
            out!("{}", r.id);
        }
        return Ok(());
    }
    match format {
        "json" => {
            let items: Vec<serde_json::Value> = all
                .iter()
                .map(|(r, s)| {
                    let mut v = serde_json::to_value(r.oci_state(*s)).unwrap_or_default();
                    v["owner"] = owner(&r.id).into();
                    v
                })
                .collect();
            out!("{}", serde_json::to_string(&items)?);
        }
        "table" => {
            let rows: Vec<[String; 6]> = all
                .iter()
                .map(|(r, s)| {
                    let pid = if *s == Status::Stopped { 0 } else { r.pid };
                    [
                        r.id.clone(),
                        pid.to_string(),
                        s.to_string(),
                        r.bundle.display().to_string(),
                        r.created.clone(),
                        owner(&r.id),
                    ]
                })
                .collect();
            print_table(
                &["ID", "PID", "STATUS", "BUNDLE", "CREATED", "OWNER"],
                &rows,
            );
        }
        other => anyhow::bail!("invalid format option {other:?}: want table or json"),
    }
    Ok(())
}

/// Columns padded like Go's tabwriter (min width 12, padding 1), as runc prints them.
fn print_table<const N: usize>(header: &[&str; N], rows: &[[String; N]]) {
    let mut widths = [0usize; N];
    for (i, h) in header.iter().enumerate() {
        widths[i] = h.len();
    }
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            widths[i] = widths[i].max(c.len());
        }
    }
    let line = |cells: Vec<&str>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}", w = (widths[i] + 1).max(12)));
            }
        }
        out!("{s}");
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn ps(rt: &Runtime, id: &str, format: &str, ps_args: &[String]) -> anyhow::Result<()> {
    let pids = rt.pids(id)?;
    match format {
        "json" => out!("{}", serde_json::to_string(&pids)?),
        "table" => {
            let args = if ps_args.is_empty() {
                vec!["-ef".to_string()]
            } else {
                ps_args.to_vec()
            };
            let out = std::process::Command::new("ps").args(&args).output()?;
            if !out.status.success() {
                anyhow::bail!(
                    "ps {}: {}",
                    args.join(" "),
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
            let text = String::from_utf8_lossy(&out.stdout);
            let mut lines = text.lines();
            let header = lines.next().unwrap_or_default();
            let pid_col = header
                .split_whitespace()
                .position(|c| c == "PID")
                .ok_or_else(|| anyhow::anyhow!("ps output has no PID column"))?;
            out!("{header}");
            for l in lines {
                if l.split_whitespace()
                    .nth(pid_col)
                    .and_then(|p| p.parse().ok())
                    .is_some_and(|p: i32| pids.contains(&p))
                {
                    out!("{l}");
                }
            }
        }
        other => anyhow::bail!("invalid format option {other:?}: want table or json"),
    }
    Ok(())
}

/// exec's process: --process FILE as is, or the container's own process with the flags applied
/// (runc's rules: env appended, --cap added to bounding/effective/permitted and to ambient when
/// inheritable is set).
fn exec(rt: &Runtime, a: &ExecArgs) -> anyhow::Result<i32> {
    let process: oci_spec::runtime::Process = match &a.process {
        Some(path) => {
            let data = std::fs::read(path)
                .map_err(|e| anyhow::anyhow!("--process {}: {e}", path.display()))?;
            skiff_runtime::bundle::parse_json(&data)
                .map_err(|e| anyhow::anyhow!("--process {}: {e}", path.display()))?
        }
        None => {
            if a.args.is_empty() {
                anyhow::bail!("exec: no command given (use --process FILE or ARGS)");
            }
            let mut p = rt.exec_template(&a.id)?;
            p.set_args(Some(a.args.clone()));
            let mut env = p.env().clone().unwrap_or_default();
            env.extend(a.env.iter().cloned());
            p.set_env(Some(env));
            if let Some(cwd) = &a.cwd {
                p.set_cwd(cwd.clone());
            }
            if let Some(user) = &a.user {
                let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
                let uid = uid
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--user {user}: want uid[:gid]"))?;
                let gid = gid
                    .parse()
                    .map_err(|_| anyhow::anyhow!("--user {user}: want uid[:gid]"))?;
                p.user_mut().set_uid(uid);
                p.user_mut().set_gid(gid);
            }
            if !a.additional_gids.is_empty() {
                p.user_mut()
                    .set_additional_gids(Some(a.additional_gids.clone()));
            }
            p.set_terminal(Some(a.tty));
            if a.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            if !a.cap.is_empty() {
                p.set_capabilities(Some(add_caps(
                    p.capabilities().clone().unwrap_or_default(),
                    &a.cap,
                )?));
            }
            p
        }
    };
    Ok(rt.exec(
        &a.id,
        skiff_runtime::ExecOptions {
            process,
            console_socket: a.console_socket.clone(),
            pid_file: a.pid_file.clone(),
            detach: a.detach,
            preserve_fds: preserve_fds(a.preserve_fds)?,
            ignore_paused: a.ignore_paused,
        },
    )?)
}

fn add_caps(
    mut caps: oci_spec::runtime::LinuxCapabilities,
    add: &[String],
) -> anyhow::Result<oci_spec::runtime::LinuxCapabilities> {
    use std::str::FromStr;
    let mut parsed = vec![];
    for c in add {
        let name = c.strip_prefix("CAP_").unwrap_or(c);
        parsed.push(
            oci_spec::runtime::Capability::from_str(name)
                .map_err(|_| anyhow::anyhow!("--cap {c}: unknown capability"))?,
        );
    }
    let extend = |set: &Option<oci_spec::runtime::Capabilities>| {
        let mut s = set.clone().unwrap_or_default();
        s.extend(parsed.iter().copied());
        Some(s)
    };
    let with_ambient = caps.inheritable().as_ref().is_some_and(|i| !i.is_empty());
    let (b, e, p) = (
        extend(caps.bounding()),
        extend(caps.effective()),
        extend(caps.permitted()),
    );
    caps.set_bounding(b);
    caps.set_effective(e);
    caps.set_permitted(p);
    if with_ambient {
        let a = extend(caps.ambient());
        caps.set_ambient(a);
    }
    Ok(caps)
}

/// "5s", "500ms", "1m", or plain seconds.
fn parse_duration(s: &str) -> anyhow::Result<std::time::Duration> {
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("invalid duration {s:?}"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => anyhow::bail!("invalid duration {s:?}: unit must be ms, s, m or h"),
    };
    if secs <= 0.0 {
        anyhow::bail!("invalid duration {s:?}: must be positive");
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// Bytes with an optional binary unit (k, m, g, t; "b" and "-1" allowed), as runc's flags take.
fn parse_bytes(flag: &str, s: &str) -> anyhow::Result<i64> {
    if s == "-1" {
        return Ok(-1);
    }
    let lower = s.trim().to_ascii_lowercase();
    let lower = lower.strip_suffix('b').unwrap_or(&lower);
    let (num, mult) = match lower.chars().last() {
        Some('k') => (&lower[..lower.len() - 1], 1i64 << 10),
        Some('m') => (&lower[..lower.len() - 1], 1 << 20),
        Some('g') => (&lower[..lower.len() - 1], 1 << 30),
        Some('t') => (&lower[..lower.len() - 1], 1 << 40),
        _ => (lower, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| anyhow::anyhow!("--{flag} {s:?}: not a size"))?;
    Ok((n * mult as f64) as i64)
}

/// update's resources: --resources FILE (or stdin), then the flags on top.
fn update_resources(a: &UpdateArgs) -> anyhow::Result<oci_spec::runtime::LinuxResources> {
    use serde_json::{Value, json};
    let mut r: Value = match &a.resources {
        Some(path) => {
            let data = if path.as_os_str() == "-" {
                let mut v = vec![];
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)?;
                v
            } else {
                std::fs::read(path)
                    .map_err(|e| anyhow::anyhow!("--resources {}: {e}", path.display()))?
            };
            skiff_runtime::bundle::parse_json(&data)
                .map_err(|e| anyhow::anyhow!("--resources {}: {e}", path.display()))?
        }
        None => json!({}),
    };
    let mut set = |section: &str, key: &str, v: Value| {
        if !r[section].is_object() {
            r[section] = json!({});
        }
        r[section][key] = v;
    };
    if let Some(v) = a.blkio_weight {
        set("blockIO", "weight", v.into());
    }
    if let Some(v) = a.cpu_period {
        set("cpu", "period", v.into());
    }
    if let Some(v) = a.cpu_quota {
        set("cpu", "quota", v.into());
    }
    if let Some(v) = a.cpu_rt_period {
        set("cpu", "realtimePeriod", v.into());
    }
    if let Some(v) = a.cpu_rt_runtime {
        set("cpu", "realtimeRuntime", v.into());
    }
    if let Some(v) = a.cpu_share {
        set("cpu", "shares", v.into());
    }
    if let Some(v) = &a.cpuset_cpus {
        set("cpu", "cpus", v.clone().into());
    }
    if let Some(v) = &a.cpuset_mems {
        set("cpu", "mems", v.clone().into());
    }
    if let Some(v) = &a.memory {
        set("memory", "limit", parse_bytes("memory", v)?.into());
    }
    if let Some(v) = &a.memory_reservation {
        set(
            "memory",
            "reservation",
            parse_bytes("memory-reservation", v)?.into(),
        );
    }
    if let Some(v) = &a.memory_swap {
        set("memory", "swap", parse_bytes("memory-swap", v)?.into());
    }
    if let Some(v) = a.pids_limit {
        set("pids", "limit", v.into());
    }
    if a.kernel_memory.is_some() {
        tracing::warn!(
            "--kernel-memory is ignored: kernel memory limits are not supported by current kernels"
        );
    }
    serde_json::from_value(r).map_err(|e| anyhow::anyhow!("resources: {e}"))
}

#[cfg(test)]
mod tests {
    use super::{Cli, needs_sealed_exe, parse_lifecycle};
    use clap::Parser;

    fn fast(line: &str) -> Option<Cli> {
        parse_lifecycle(line.split_whitespace().map(std::ffi::OsString::from))
    }

    #[test]
    fn lifecycle_lines_parse_as_clap_does() {
        for line in [
            // containerd's runc shim
            "--root /run/containerd/runc/k8s.io --log /run/x/log.json --log-format json create --bundle /run/b --pid-file /run/b/init.pid --console-socket /tmp/pty.sock id1",
            "--root /r --log /l --log-format json start id1",
            "--root /r --log /l --log-format json kill id1 9",
            "--root /r --log /l --log-format json kill --all id1 SIGKILL",
            "--root /r --log /l --log-format json delete --force id1",
            "--root /r state id1",
            // podman (conmon), with the global options after the command too
            "--systemd-cgroup --root /r create --bundle /b --pid-file /p --no-new-keyring id2",
            "create --root /r --debug -b /b --preserve-fds 2 --no-pivot id3",
            "--rootless true run -d --bundle=/b --preserve-fds=-0 x",
            "run -b . id4",
            "delete -f id5",
            "kill -a id6",
            // refused later, by options(), with a message of its own
            "create --preserve-fds -1 id7",
        ] {
            let clap =
                Cli::try_parse_from(std::iter::once("skiff-runc").chain(line.split_whitespace()))
                    .unwrap_or_else(|e| panic!("clap refuses {line:?}: {e}"));
            assert_eq!(fast(line), Some(clap), "{line}");
        }
    }

    #[test]
    fn anything_else_goes_to_clap() {
        for line in [
            "",
            "--help",
            "run --help",
            "--version",
            "exec id sh",
            "list",
            "run",
            "run id extra",
            "create --bundle",
            "create --bundle --pid-file /p id",
            "create --unknown id",
            "create -bdir id",
            "run -df id",
            "--debug --debug state id",
            "--root /a --root /b state id",
            "kill id 9 10",
            "state -- id",
            "create --root= id",
            "delete --force=yes id",
            "--rootless true state --rootless true id",
        ] {
            assert_eq!(fast(line), None, "{line}");
        }
    }

    fn needs(line: &str) -> bool {
        needs_sealed_exe(line.split_whitespace().map(std::ffi::OsString::from))
    }

    #[test]
    fn sealed_exe_for_the_commands_that_exec_into_a_container() {
        // run decides once it has read the config.
        assert!(!needs("run -d --bundle /b id"));
        assert!(needs(
            "--root /run/x --log /l --log-format json create --bundle b id"
        ));
        assert!(needs("--debug --root=/run/x exec id /bin/sh"));
        // A global option's value is no command, even when it reads like one.
        assert!(!needs("--root run state id"));
        assert!(!needs("--log exec kill id"));
        assert!(!needs("state run"));
        assert!(!needs("--version"));
        assert!(!needs(""));
    }
}
