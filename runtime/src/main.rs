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

#[derive(Parser)]
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

#[derive(clap::Args)]
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
    #[arg(long = "preserve-fds", default_value_t = 0)]
    preserve_fds: i32,
    id: String,
}

impl CreateArgs {
    fn options(&self) -> CreateOptions {
        CreateOptions {
            bundle: self.bundle.clone(),
            console_socket: self.console_socket.clone(),
            pid_file: self.pid_file.clone(),
            no_pivot: self.no_pivot,
            preserve_fds: self.preserve_fds,
        }
    }
}

#[derive(Subcommand)]
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
}

fn main() {
    let cli = Cli::parse();
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

    match run(&cli) {
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

fn run(cli: &Cli) -> anyhow::Result<i32> {
    if cli.systemd_cgroup {
        anyhow::bail!("--systemd-cgroup is not supported: skiff-runc manages cgroupfs directly");
    }
    let rt = Runtime::new(&cli.root);
    match &cli.command {
        Command::Create(args) => {
            seal()?;
            rt.create(&args.id, args.options())?;
        }
        Command::Start { id } => rt.start(id)?,
        Command::Run { create, detach } => {
            seal()?;
            return Ok(rt.run(&create.id, create.options(), *detach)?);
        }
        Command::State { id } => {
            let (record, status) = rt.load(id)?;
            println!(
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
        Command::Features => println!("{}", serde_json::to_string_pretty(&features::features())?),
    }
    Ok(0)
}

/// Runs the rest of this command from a read-only view of our binary (CVE-2019-5736).
fn seal() -> anyhow::Result<()> {
    sealed_exe::ensure().map_err(|e| anyhow::anyhow!("cannot protect the runtime binary: {e}"))
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
            println!("{}", r.id);
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
            println!("{}", serde_json::to_string(&items)?);
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
        println!("{s}");
    };
    line(header.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn ps(rt: &Runtime, id: &str, format: &str, ps_args: &[String]) -> anyhow::Result<()> {
    let pids = rt.pids(id)?;
    match format {
        "json" => println!("{}", serde_json::to_string(&pids)?),
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
            println!("{header}");
            for l in lines {
                if l.split_whitespace()
                    .nth(pid_col)
                    .and_then(|p| p.parse().ok())
                    .is_some_and(|p: i32| pids.contains(&p))
                {
                    println!("{l}");
                }
            }
        }
        other => anyhow::bail!("invalid format option {other:?}: want table or json"),
    }
    Ok(())
}
