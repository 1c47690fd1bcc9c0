//! `skiff install server|agent`: systemd units (and an environment file) that run `skiff server`
//! or `skiff agent` on a machine of its own, as k3s's installer writes them.
//!
//! Every flag is checked before anything is written; every file is written atomically (a
//! temporary file, fsync, rename), and a file that already exists with other contents is left
//! alone unless `--force` says otherwise — the check is made for all of them before the first
//! is written, so a refused install leaves nothing half-made. `--dry-run` prints the files.
//!
//! The units are `Type=simple`: skiff does not speak sd_notify. The agent's unit is
//! `KillMode=process` (as containerd's): stopping or restarting it stops the kubelet and proxy
//! but not the per-container `skiff-shim`s, so the pods keep running and the kubelet adopts them
//! again when it starts; `Delegate=yes` leaves the pods' cgroups to it.

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use skiff_apiserver::validation::is_dns1123_subdomain;

/// Where the files go, and how.
#[derive(clap::Args)]
pub struct Target {
    /// Directory the systemd unit is written to.
    #[arg(long, default_value = "/etc/systemd/system")]
    unit_dir: PathBuf,
    /// The `skiff` binary the unit runs (default: this one).
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Replace files that exist with other contents.
    #[arg(long)]
    force: bool,
    /// Print the files instead of writing them.
    #[arg(long)]
    dry_run: bool,
}

/// `skiff install server`'s flags.
#[derive(clap::Args)]
pub struct ServerArgs {
    /// The server's data directory.
    #[arg(long, default_value = "/var/lib/skiff/server")]
    data_dir: PathBuf,
    /// Address and port the server serves HTTPS on.
    #[arg(long, default_value = "0.0.0.0:6443", value_parser = skiff_apiserver::server::parse_listen)]
    listen: SocketAddr,
    /// Environment file the unit reads (RUST_LOG, …).
    #[arg(long, default_value = "/etc/skiff/server.env")]
    env_file: PathBuf,
    /// A further flag for `skiff server`, e.g. `--server-arg=--etcd-endpoints=http://…`;
    /// repeatable.
    #[arg(long, allow_hyphen_values = true)]
    server_arg: Vec<String>,
    #[command(flatten)]
    target: Target,
}

/// `skiff install agent`'s flags.
#[derive(clap::Args)]
pub struct AgentArgs {
    /// The API server's URL, e.g. https://10.0.0.1:6443.
    #[arg(long)]
    server: String,
    /// The join token (`skiff token create`); kept in the environment file, readable by root
    /// only.
    #[arg(long)]
    token: String,
    /// The agent's data directory.
    #[arg(long, default_value = "/var/lib/skiff/agent")]
    data_dir: PathBuf,
    /// The node's name (default: the host name, when the agent starts).
    #[arg(long)]
    node_name: Option<String>,
    /// The node's InternalIP (default: found when the agent starts).
    #[arg(long)]
    node_ip: Option<IpAddr>,
    /// A further flag for the kubelet, e.g. `--kubelet-arg=--max-pods=50`; repeatable.
    #[arg(long, allow_hyphen_values = true)]
    kubelet_arg: Vec<String>,
    /// Environment file the unit reads: the token, RUST_LOG.
    #[arg(long, default_value = "/etc/skiff/agent.env")]
    env_file: PathBuf,
    #[command(flatten)]
    target: Target,
}

/// A file to write.
struct File {
    path: PathBuf,
    contents: String,
    private: bool,
}

pub fn server(args: ServerArgs) -> anyhow::Result<()> {
    let bin = binary(&args.target)?;
    absolute("--data-dir", &args.data_dir)?;
    absolute("--env-file", &args.env_file)?;
    for a in &args.server_arg {
        printable("--server-arg", a)?;
    }
    let mut command = vec![
        path_word("--bin", &bin)?,
        "server".into(),
        "--data-dir".into(),
        path_word("--data-dir", &args.data_dir)?,
        "--listen".into(),
        args.listen.to_string(),
    ];
    command.extend(args.server_arg.iter().map(|a| exec_word(a)));
    let unit = unit(
        "skiff server: the Kubernetes API, the scheduler and the controllers",
        EnvFile::Optional(&args.env_file),
        &[],
        &command,
        // Nothing but the server's own process runs in its cgroup.
        &[],
    )?;
    let files = [
        File {
            path: args.target.unit_dir.join("skiff-server.service"),
            contents: unit,
            private: false,
        },
        File {
            path: args.env_file,
            contents: "# Read by skiff-server.service.\nRUST_LOG=info\n".into(),
            private: true,
        },
    ];
    write_all(&files, &args.target, "skiff-server")
}

pub fn agent(args: AgentArgs) -> anyhow::Result<()> {
    let bin = binary(&args.target)?;
    check_server_url(&args.server)?;
    check_token(&args.token)?;
    absolute("--data-dir", &args.data_dir)?;
    absolute("--env-file", &args.env_file)?;
    if let Some(n) = &args.node_name
        && !is_dns1123_subdomain(n)
    {
        bail!("--node-name {n:?}: a node name is a lowercase DNS subdomain (a-z, 0-9, '-', '.')");
    }
    for a in &args.kubelet_arg {
        printable("--kubelet-arg", a)?;
    }
    let mut command = vec![
        path_word("--bin", &bin)?,
        "agent".into(),
        "--server".into(),
        args.server.clone(),
        // No --token: the agent reads SKIFF_TOKEN from the environment file, so that the
        // token is neither in a world-readable unit nor in the process's command line.
        "--data-dir".into(),
        path_word("--data-dir", &args.data_dir)?,
    ];
    if let Some(n) = &args.node_name {
        command.extend(["--node-name".into(), n.clone()]);
    }
    if let Some(ip) = args.node_ip {
        command.extend(["--node-ip".into(), ip.to_string()]);
    }
    for a in &args.kubelet_arg {
        command.push(exec_word(&format!("--kubelet-arg={a}")));
    }
    warn_unless_beside(&bin, &["skiff-runc", "skiff-shim"]);
    let unit = unit(
        "skiff agent: the kubelet, proxy and cluster DNS of this node",
        EnvFile::Required(&args.env_file),
        // The pods' overlayfs roots, and bridged pod traffic through the Service rules.
        &["overlay", "br_netfilter"],
        &command,
        &[
            "Delegate=yes",
            "KillMode=process",
            "LimitNPROC=infinity",
            "LimitCORE=infinity",
            "TasksMax=infinity",
            "OOMScoreAdjust=-999",
        ],
    )?;
    let env = format!(
        "# Read by skiff-agent.service: the join token (keep this file private).\n\
         SKIFF_TOKEN={}\nRUST_LOG=info\n",
        args.token
    );
    let files = [
        File {
            path: args.target.unit_dir.join("skiff-agent.service"),
            contents: unit,
            private: false,
        },
        File {
            path: args.env_file,
            contents: env,
            private: true,
        },
    ];
    write_all(&files, &args.target, "skiff-agent")
}

/// Whether the unit can start without its environment file.
enum EnvFile<'a> {
    Optional(&'a Path),
    Required(&'a Path),
}

/// A unit running `command` (already escaped words, `${SKIFF_…}` references kept).
fn unit(
    description: &str,
    env_file: EnvFile,
    modules: &[&str],
    command: &[String],
    extra: &[&str],
) -> anyhow::Result<String> {
    let mut u = String::new();
    let _ = write!(
        u,
        "[Unit]\n\
         Description={description}\n\
         Wants=network-online.target\n\
         After=network-online.target\n\
         \n\
         [Service]\n\
         Type=simple\n\
         EnvironmentFile={}\n",
        match env_file {
            EnvFile::Optional(p) => format!("-{}", path_word("--env-file", p)?),
            EnvFile::Required(p) => path_word("--env-file", p)?,
        }
    );
    for m in modules {
        // `-`: a module built into the kernel (or missing modprobe) is no reason to fail.
        let _ = writeln!(u, "ExecStartPre=-/sbin/modprobe {m}");
    }
    let _ = write!(
        u,
        "ExecStart={}\n\
         Restart=always\n\
         RestartSec=5s\n\
         LimitNOFILE=1048576\n",
        command.join(" ")
    );
    for line in extra {
        let _ = writeln!(u, "{line}");
    }
    u.push_str("\n[Install]\nWantedBy=multi-user.target\n");
    Ok(u)
}

fn binary(target: &Target) -> anyhow::Result<PathBuf> {
    let bin = match &target.bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("finding this binary (give --bin)")?,
    };
    absolute("--bin", &bin)?;
    if !bin.is_file() {
        bail!(
            "--bin {}: no such file (the unit would fail to start)",
            bin.display()
        );
    }
    Ok(bin)
}

/// The agent runs containers with `skiff-runc` and `skiff-shim`, found next to `skiff` or on
/// the unit's PATH (/usr/local/bin, /usr/bin, …): a warning when they are in neither.
fn warn_unless_beside(bin: &Path, helpers: &[&str]) {
    let dirs = bin
        .parent()
        .into_iter()
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin"].map(Path::new));
    let dirs: Vec<&Path> = dirs.collect();
    for h in helpers {
        if !dirs.iter().any(|d| d.join(h).is_file()) {
            tracing::warn!(
                "{h} is neither next to {} nor on the unit's PATH: install it there before starting the agent",
                bin.display()
            );
        }
    }
}

fn absolute(flag: &str, p: &Path) -> anyhow::Result<()> {
    if !p.is_absolute() {
        bail!("{flag} {}: must be an absolute path", p.display());
    }
    Ok(())
}

/// Printable characters only: no line breaks that would end the unit's line.
fn printable(flag: &str, s: &str) -> anyhow::Result<()> {
    if s.is_empty() || s.chars().any(|c| c.is_control()) {
        bail!("{flag} {s:?}: must be non-empty and without control characters");
    }
    Ok(())
}

/// A path as one word of an ExecStart line.
fn path_word(flag: &str, p: &Path) -> anyhow::Result<String> {
    let s = p
        .to_str()
        .with_context(|| format!("{flag} {}: not UTF-8", p.display()))?;
    printable(flag, s)?;
    if s.contains(|c: char| c.is_whitespace() || "\"'\\$%;".contains(c)) {
        bail!(
            "{flag} {s:?}: a path in a unit file cannot hold spaces, quotes, '\\', '$', '%' or ';'"
        );
    }
    Ok(s.to_string())
}

/// A word of an ExecStart line as given: quoted when it holds spaces or quotes, with systemd's
/// specifiers (`%`) and variable references (`$`) escaped.
fn exec_word(s: &str) -> String {
    let escaped = s
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('%', "%%")
        .replace('$', "$$");
    if escaped.is_empty() || s.contains(|c: char| c.is_whitespace() || "\"'\\".contains(c)) {
        format!("\"{escaped}\"")
    } else {
        escaped
    }
}

fn check_server_url(s: &str) -> anyhow::Result<()> {
    let rest = s.strip_prefix("https://").with_context(|| {
        format!(
            "--server {s:?}: expected the API server's https:// URL, e.g. https://10.0.0.1:6443"
        )
    })?;
    let host = rest.trim_end_matches('/');
    let valid = !host.is_empty()
        && !host.contains('/')
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
    if !valid {
        bail!("--server {s:?}: expected https://HOST[:PORT] (a name or address, no path)");
    }
    Ok(())
}

/// A token is printable ASCII without spaces, quotes or `\` (it sits in an environment file and
/// is expanded into one word of the command line).
fn check_token(t: &str) -> anyhow::Result<()> {
    let valid = !t.is_empty()
        && t.len() <= 512
        && t.chars()
            .all(|c| c.is_ascii_graphic() && !"\"'\\$%`".contains(c));
    if !valid {
        bail!(
            "--token: expected the token `skiff token create` printed (printable, no spaces or quotes)"
        );
    }
    Ok(())
}

fn write_all(files: &[File], target: &Target, unit: &str) -> anyhow::Result<()> {
    if target.dry_run {
        for f in files {
            println!("# {}\n{}", f.path.display(), f.contents);
        }
        return Ok(());
    }
    let mut to_write = Vec::new();
    for f in files {
        match std::fs::read(&f.path) {
            Ok(old) if old == f.contents.as_bytes() => {}
            Ok(_) if !target.force => bail!(
                "{} exists with other contents; --force replaces it",
                f.path.display()
            ),
            Ok(_) => to_write.push(f),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => to_write.push(f),
            Err(e) => return Err(e).with_context(|| format!("reading {}", f.path.display())),
        }
    }
    for f in &to_write {
        if let Some(dir) = f.path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        skiff_apiserver::pki::write(&f.path, f.contents.as_bytes(), f.private)
            .with_context(|| format!("writing {}", f.path.display()))?;
        println!("wrote {}", f.path.display());
    }
    if to_write.is_empty() {
        println!("{unit}: the files are already as they should be");
    }
    println!("start it with: systemctl daemon-reload && systemctl enable --now {unit}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_urls() {
        assert!(check_server_url("https://10.0.0.1:6443").is_ok());
        assert!(check_server_url("https://server.example:6443/").is_ok());
        assert!(check_server_url("https://[fd00::1]:6443").is_ok());
        for bad in [
            "http://10.0.0.1:6443",
            "https://",
            "https://a b",
            "https://x/y",
        ] {
            assert!(check_server_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn tokens() {
        assert!(check_token("abcdef.0123456789abcdef").is_ok());
        assert!(check_token("K10abc::server:xyz").is_ok());
        for bad in ["", "a b", "a\nb", "a\"b", "$x", "a%b"] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn exec_words() {
        assert_eq!(exec_word("--max-pods=50"), "--max-pods=50");
        assert_eq!(exec_word("--a=b c"), "\"--a=b c\"");
        assert_eq!(exec_word("50%$x"), "50%%$$x");
        assert_eq!(exec_word(r#"a"b\"#), r#""a\"b\\""#);
    }

    #[test]
    fn paths_in_units() {
        assert!(path_word("--bin", Path::new("/usr/local/bin/skiff")).is_ok());
        for bad in ["/a b", "/a\nb", "/a$b", "/a%i"] {
            assert!(path_word("--bin", Path::new(bad)).is_err(), "{bad:?}");
        }
    }
}
