//! The image store against the real thing (run as root): archives built from the host's static
//! busybox, `skopeo` for docker-archives, overlayfs mounts, hostile layers.

use std::path::{Path, PathBuf};
use std::process::Command;

use skiff_kubelet::image::busybox::{BusyboxImage, ExtraFile};
use skiff_kubelet::image::oci_archive::{LayerBuilder, write_oci_archive};
use skiff_kubelet::image::{
    ImageConfig, ImageError, ImageStore, PullOptions, PullPolicy, mount_rootfs, unmount_rootfs,
};

/// A scratch directory whose root filesystems are unmounted when the test ends, pass or fail.
struct Scratch {
    dir: tempfile::TempDir,
    containers: Vec<PathBuf>,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            dir: tempfile::Builder::new()
                .prefix("skiff-images-")
                .tempdir()
                .unwrap(),
            containers: Vec::new(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn store(&self) -> ImageStore {
        ImageStore::open(&self.path("root")).unwrap()
    }

    fn container(&mut self, name: &str) -> PathBuf {
        let dir = self.path(&format!("containers/{name}"));
        self.containers.push(dir.clone());
        dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for dir in &self.containers {
            let _ = unmount_rootfs(dir);
        }
    }
}

fn require_tool(tool: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {tool} >/dev/null")])
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "{tool} is missing: install the Debian package {package}"
    );
}

fn run(command: &mut Command) -> String {
    let output = command.output().unwrap();
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn busybox_archive(scratch: &Scratch, reference: &str) -> PathBuf {
    let path = scratch.path(&format!("{}.tar", reference.replace([':', '/'], "_")));
    BusyboxImage::new(reference).write(&path).unwrap();
    path
}

#[test]
fn busybox_oci_archive_imports_and_mounts_on_overlayfs() {
    let mut scratch = Scratch::new();
    let archive = busybox_archive(&scratch, "busybox:1");
    let store = scratch.store();
    let imported = store.import(&archive).unwrap();
    assert_eq!(imported.len(), 1);
    let image = store.lookup("busybox:1").unwrap();
    assert_eq!(image.id, imported[0].id);
    assert_eq!(image.repo_tags, ["docker.io/library/busybox:1"]);
    assert_eq!(image.config.cmd, Some(vec!["sh".to_string()]));
    assert!(image.size > 1_000_000, "size {}", image.size);
    assert_eq!(store.lookup(&image.id).unwrap().id, image.id);
    assert_eq!(store.lookup(&image.id[7..19]).unwrap().id, image.id);
    assert!(matches!(
        store.lookup("busybox:2"),
        Err(ImageError::NotFound(_))
    ));

    // Importing again changes nothing; a second tag of other content shares nothing wrongly.
    store.import(&archive).unwrap();
    let mut second = BusyboxImage::new("busybox:2");
    second.extra_files.push(ExtraFile {
        path: "/etc/motd".into(),
        contents: b"second\n".to_vec(),
        mode: 0o644,
    });
    let second_archive = scratch.path("second.tar");
    let built = second.write(&second_archive).unwrap();
    store.import(&second_archive).unwrap();
    assert_eq!(
        store.lookup("docker.io/library/busybox:2").unwrap().id,
        built.id
    );
    assert_ne!(built.id, image.id);
    assert_eq!(store.list().unwrap().len(), 2);

    let first = scratch.container("first");
    let rootfs = mount_rootfs(&image, &first).unwrap();
    assert_eq!(
        mount_rootfs(&image, &first).unwrap(),
        rootfs,
        "mounting again is a no-op"
    );
    let out = run(Command::new("chroot").arg(&rootfs).args([
        "/bin/sh",
        "-c",
        "grep nobody /etc/passwd; ls /bin | grep -c ''; echo written > /tmp/file",
    ]));
    assert!(out.contains("nobody:x:65534:65534"), "{out}");
    let applets: usize = out.lines().nth(1).unwrap().trim().parse().unwrap();
    assert!(applets > 100, "{applets} entries in /bin");
    assert!(
        first.join("upper/tmp/file").exists(),
        "writes land in the container's upper dir"
    );
    assert!(
        !image.layers[0].join("tmp/file").exists(),
        "the shared layer is untouched"
    );

    let other = scratch.container("other");
    let other_root = mount_rootfs(&image, &other).unwrap();
    assert!(!other_root.join("tmp/file").exists());
    unmount_rootfs(&first).unwrap();
    unmount_rootfs(&first).unwrap();
    assert!(!rootfs.join("bin/busybox").exists());
}

#[test]
fn docker_archive_imports_with_its_repo_tags() {
    require_tool("skopeo", "skopeo");
    let scratch = Scratch::new();
    let archive = busybox_archive(&scratch, "busybox:1");
    let docker = scratch.path("docker.tar");
    run(Command::new("skopeo").args([
        "copy",
        "--quiet",
        &format!("oci-archive:{}", archive.display()),
        &format!(
            "docker-archive:{}:registry.example:5000/team/app:2",
            docker.display()
        ),
    ]));
    let store = scratch.store();
    let imported = store.import(&docker).unwrap();
    assert_eq!(imported[0].repo_tags, ["registry.example:5000/team/app:2"]);
    let image = store.lookup("registry.example:5000/team/app:2").unwrap();
    assert_eq!(image.config.cmd, Some(vec!["sh".to_string()]));
    let oci = store.import(&archive).unwrap();
    assert_eq!(
        oci[0].layers, image.layers,
        "the same layer is unpacked once and shared"
    );
    assert!(image.layers[0].join("bin/busybox").is_file());
}

#[test]
fn whiteouts_and_opaque_directories_hide_lower_content() {
    let mut scratch = Scratch::new();
    let mut lower = LayerBuilder::new();
    lower
        .dir("etc", 0o755)
        .unwrap()
        .file("etc/gone", b"deleted above", 0o644)
        .unwrap()
        .file("etc/kept", b"kept", 0o644)
        .unwrap()
        .dir("data", 0o755)
        .unwrap()
        .file("data/old", b"old", 0o644)
        .unwrap();
    let mut upper = LayerBuilder::new();
    upper
        .whiteout("etc/gone")
        .unwrap()
        .dir("data", 0o755)
        .unwrap()
        .opaque("data")
        .unwrap()
        .file("data/new", b"new", 0o644)
        .unwrap();
    let archive = scratch.path("two-layers.tar");
    write_oci_archive(
        &archive,
        "example.com/two-layers:1",
        &ImageConfig::default(),
        &[lower.finish().unwrap(), upper.finish().unwrap()],
    )
    .unwrap();
    let store = scratch.store();
    let image = store.import(&archive).unwrap().remove(0);
    assert_eq!(image.layers.len(), 2);
    let container = scratch.container("c");
    let rootfs = mount_rootfs(&image, &container).unwrap();
    assert!(
        !rootfs.join("etc/gone").exists(),
        "whiteout hides the lower file"
    );
    assert_eq!(std::fs::read(rootfs.join("etc/kept")).unwrap(), b"kept");
    let data: Vec<String> = std::fs::read_dir(rootfs.join("data"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(
        data,
        ["new"],
        "the opaque directory shows only its own layer"
    );
}

/// A tar entry written byte by byte, so it can say what `tar::Builder` refuses to write.
fn raw_entry(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    kind: tar::EntryType,
    link: &str,
    data: &[u8],
) {
    let mut header = tar::Header::new_old();
    let old = header.as_old_mut();
    old.name[..path.len()].copy_from_slice(path.as_bytes());
    old.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_uid(0);
    header.set_gid(0);
    header.set_mtime(0);
    header.set_size(data.len() as u64);
    header.set_cksum();
    tar.append(&header, data).unwrap();
}

#[test]
fn hostile_layers_are_rejected_and_write_nothing_outside() {
    use tar::EntryType::{Link, Regular, Symlink};
    let scratch = Scratch::new();
    let outside = scratch.path("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("victim"), b"safe").unwrap();
    let victim = outside.join("victim").display().to_string();
    type Entry<'a> = (&'a str, tar::EntryType, String, &'a [u8]);
    let outside_dir = outside.display().to_string();
    let cases: Vec<(&str, &str, Vec<Entry>)> = vec![
        (
            "dot-dot",
            "'..'",
            vec![("../../../outside/evil", Regular, String::new(), b"x")],
        ),
        (
            "through-a-symlink",
            "not a directory",
            vec![
                ("escape", Symlink, outside_dir.clone(), b""),
                ("escape/evil", Regular, String::new(), b"x"),
            ],
        ),
        (
            "hardlink-outside",
            "'..'",
            vec![("stolen", Link, "../../outside/victim".into(), b"")],
        ),
        (
            "hardlink-absolute",
            "not in this layer",
            vec![("stolen", Link, victim.clone(), b"")],
        ),
        (
            "hardlink-through-a-symlink",
            "not a directory",
            vec![
                ("escape", Symlink, outside_dir.clone(), b""),
                ("stolen", Link, "escape/victim".into(), b""),
            ],
        ),
    ];
    let store = scratch.store();
    let archive_of = |name: &str, entries: &[Entry]| {
        let mut tar = tar::Builder::new(Vec::new());
        for (path, kind, link, data) in entries {
            raw_entry(&mut tar, path, *kind, link, data);
        }
        let archive = scratch.path(&format!("{name}.tar"));
        write_oci_archive(
            &archive,
            &format!("example.com/{name}:1"),
            &ImageConfig::default(),
            &[tar.into_inner().unwrap()],
        )
        .unwrap();
        archive
    };
    for (name, reason, entries) in &cases {
        let err = store.import(&archive_of(name, entries)).expect_err(name);
        assert!(
            matches!(&err, ImageError::UnsafeLayer { reason: r, .. } if r.contains(reason)),
            "{name}: {err}"
        );
        assert!(!outside.join("evil").exists(), "{name} wrote outside");
        assert_eq!(
            std::fs::read(outside.join("victim")).unwrap(),
            b"safe",
            "{name}"
        );
    }
    assert!(store.list().unwrap().is_empty());
    // A file over a symlink to the outside replaces the link instead of writing through it.
    let replaced = archive_of(
        "replace-a-symlink",
        &[
            ("victim", Symlink, victim.clone(), b""),
            ("victim", Regular, String::new(), b"inside"),
        ],
    );
    let image = store.import(&replaced).unwrap().remove(0);
    assert_eq!(std::fs::read(outside.join("victim")).unwrap(), b"safe");
    assert_eq!(
        std::fs::read(image.layers[0].join("victim")).unwrap(),
        b"inside"
    );
    store.remove(&image.id).unwrap();
    assert!(store.list().unwrap().is_empty());
    let tmp = scratch.path("root/images/tmp");
    assert_eq!(
        std::fs::read_dir(&tmp).unwrap().count(),
        0,
        "staging cleaned up"
    );
    let layers = scratch.path("root/images/layers");
    assert_eq!(
        std::fs::read_dir(&layers).unwrap().count(),
        0,
        "no layer kept"
    );
}

/// A `docker-registry` on a loopback port with its storage in the scratch directory; killed
/// when dropped.
struct Registry {
    child: std::process::Child,
    address: String,
}

impl Registry {
    fn start(scratch: &Scratch) -> Registry {
        require_tool("docker-registry", "docker-registry");
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let address = format!("127.0.0.1:{port}");
        let config = scratch.path("registry.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {address}\n",
                scratch.path("registry-data").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(scratch.path("registry.log")).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let registry = Registry { child, address };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::net::TcpStream::connect(&registry.address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "docker-registry did not listen on {}",
                registry.address
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        registry
    }

    fn push(&self, source: &str, name: &str, all: bool) {
        require_tool("skopeo", "skopeo");
        let mut command = Command::new("skopeo");
        command.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if all {
            command.arg("--all");
        }
        run(command.args([
            source.to_string(),
            format!("docker://{}/{name}", self.address),
        ]));
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// An OCI layout directory whose index holds an image index with the two images, the first as
/// linux/amd64 and the second as linux/arm64, named `multi`.
fn multi_arch_layout(scratch: &Scratch, amd64: &Path, arm64: &Path) -> PathBuf {
    let layout = scratch.path("multi-layout");
    let mut entries = Vec::new();
    for (archive, arch) in [(amd64, "amd64"), (arm64, "arm64")] {
        tar::Archive::new(std::fs::File::open(archive).unwrap())
            .unpack(&layout)
            .unwrap();
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(layout.join("index.json")).unwrap()).unwrap();
        let manifest = &index["manifests"][0];
        entries.push(serde_json::json!({
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest["digest"],
            "size": manifest["size"],
            "platform": {"architecture": arch, "os": "linux"},
        }));
    }
    let nested = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": entries,
    }))
    .unwrap();
    use sha2::Digest;
    let hex: String = sha2::Sha256::digest(&nested)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    std::fs::write(layout.join("blobs/sha256").join(&hex), &nested).unwrap();
    let top = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "digest": format!("sha256:{hex}"),
            "size": nested.len(),
            "annotations": {"org.opencontainers.image.ref.name": "multi"},
        }],
    });
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&top).unwrap()).unwrap();
    layout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pulls_from_a_local_registry() {
    let scratch = Scratch::new();
    let registry = Registry::start(&scratch);
    let archive = busybox_archive(&scratch, "busybox:1");
    let built_id = ImageStore::open(&scratch.path("builder"))
        .unwrap()
        .import(&archive)
        .unwrap()[0]
        .id
        .clone();
    registry.push(
        &format!("oci-archive:{}", archive.display()),
        "tools/busybox:1",
        false,
    );
    let mut other = BusyboxImage::new("other:1");
    other.extra_files.push(ExtraFile {
        path: "/etc/arch".into(),
        contents: b"arm64\n".to_vec(),
        mode: 0o644,
    });
    let other_archive = scratch.path("other.tar");
    other.write(&other_archive).unwrap();
    let layout = multi_arch_layout(&scratch, &archive, &other_archive);
    registry.push(
        &format!("oci:{}:multi", layout.display()),
        "tools/multi:1",
        true,
    );

    let store = scratch.store();
    let insecure = PullOptions {
        insecure_registries: vec![registry.address.clone()],
        ..PullOptions::default()
    };
    let reference = format!("{}/tools/busybox:1", registry.address);

    // Plain HTTP is used only for registries named insecure.
    let err = store
        .pull(&reference, &PullOptions::default())
        .await
        .unwrap_err();
    assert!(matches!(err, ImageError::Pull { .. }), "{err}");

    let image = store.pull(&reference, &insecure).await.unwrap();
    assert_eq!(image.id, built_id);
    assert_eq!(image.repo_tags, std::slice::from_ref(&reference));
    assert!(
        image.repo_digests[0].starts_with(&format!("{}/tools/busybox@sha256:", registry.address))
    );
    assert!(image.layers[0].join("bin/busybox").is_file());
    assert_eq!(store.lookup(&image.repo_digests[0]).unwrap().id, built_id);

    // The index resolves to the linux/amd64 image, and its layer is already present.
    let multi = store
        .pull(&format!("{}/tools/multi:1", registry.address), &insecure)
        .await
        .unwrap();
    assert_eq!(multi.id, built_id);
    assert_eq!(multi.layers, image.layers);

    let missing = format!("{}/tools/missing:1", registry.address);
    match store.pull(&missing, &insecure).await {
        Err(ImageError::Pull { reason, .. }) => {
            assert!(
                reason.to_lowercase().contains("manifest unknown"),
                "{reason}"
            )
        }
        other => panic!("pulling a missing image: {other:?}"),
    }

    // Pull policies.
    let never = store
        .ensure(&missing, PullPolicy::Never, &insecure)
        .await
        .unwrap_err();
    assert!(matches!(never, ImageError::NeverPull { .. }), "{never}");
    assert!(!never.is_pull_failure());
    let present = store
        .ensure(&reference, PullPolicy::Never, &insecure)
        .await
        .unwrap();
    assert_eq!(present.id, built_id);
    drop(registry);
    let cached = store
        .ensure(&reference, PullPolicy::IfNotPresent, &insecure)
        .await
        .unwrap();
    assert_eq!(
        cached.id, built_id,
        "IfNotPresent does not reach the registry"
    );
    let always = store
        .ensure(&reference, PullPolicy::Always, &insecure)
        .await
        .unwrap_err();
    assert!(always.is_pull_failure(), "{always}");
}

/// Large enough that the importer is caught unpacking it.
const BIG_FILE: u64 = 16 << 20;

#[test]
fn an_import_killed_midway_leaves_nothing_used_and_can_be_redone() {
    let scratch = Scratch::new();
    let mut big = LayerBuilder::new();
    big.file("big", &vec![0u8; BIG_FILE as usize], 0o644)
        .unwrap();
    let image = BusyboxImage::new("big:1");
    let archive = scratch.path("big.tar");
    write_oci_archive(&archive, "big:1", &image.config, &[big.finish().unwrap()]).unwrap();

    let root = scratch.path("root");
    let mut child = Command::new(env!("CARGO_BIN_EXE_skiff-kubelet"))
        .arg("--root-dir")
        .arg(&root)
        .args(["image", "import"])
        .arg(&archive)
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let staging = root.join("images/tmp");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let partial = loop {
        let found = std::fs::read_dir(&staging).ok().and_then(|dirs| {
            dirs.flatten()
                .flat_map(|d| std::fs::read_dir(d.path()).into_iter().flatten().flatten())
                .map(|layer| layer.path().join("fs/big"))
                .find(|big| big.exists())
        });
        if let Some(big) = found {
            break big;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the import ended before it could be killed"
        );
        assert!(
            std::time::Instant::now() < deadline,
            "the import never started unpacking"
        );
        std::thread::sleep(std::time::Duration::from_millis(1));
    };
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(partial.exists(), "killed while unpacking");

    let store = ImageStore::open(&root).unwrap();
    assert!(store.list().unwrap().is_empty(), "no half image is listed");
    assert!(matches!(
        store.lookup("big:1"),
        Err(ImageError::NotFound(_))
    ));
    assert_eq!(
        std::fs::read_dir(&staging).unwrap().count(),
        0,
        "staging debris removed"
    );
    let image = store.import(&archive).unwrap().remove(0);
    assert_eq!(
        std::fs::metadata(image.layers[0].join("big"))
            .unwrap()
            .len(),
        BIG_FILE
    );
    assert_eq!(store.lookup("big:1").unwrap().id, image.id);
}

#[test]
fn garbage_collection_removes_unused_images_least_recently_used_first() {
    let scratch = Scratch::new();
    let store = scratch.store();
    let mut ids = Vec::new();
    for tag in ["1", "2", "3"] {
        let mut image = BusyboxImage::new(&format!("busybox:{tag}"));
        image.extra_files.push(ExtraFile {
            path: "/etc/tag".into(),
            contents: tag.as_bytes().to_vec(),
            mode: 0o644,
        });
        let archive = scratch.path(&format!("{tag}.tar"));
        image.write(&archive).unwrap();
        ids.push(store.import(&archive).unwrap().remove(0).id);
    }
    let per_image = store.lookup("busybox:1").unwrap().size;
    assert_eq!(store.disk_usage().unwrap(), 3 * per_image);
    // busybox:3 was used after busybox:2, so busybox:2 goes first; busybox:1 runs.
    std::thread::sleep(std::time::Duration::from_millis(5));
    store.mark_used(&ids[2]).unwrap();
    let in_use = std::collections::HashSet::from([ids[0].clone()]);
    let report = store.collect_garbage(&in_use, 1).unwrap();
    assert_eq!(report.removed, [ids[1].clone()]);
    assert_eq!(report.freed_bytes, per_image);
    assert!(matches!(
        store.lookup("busybox:2"),
        Err(ImageError::NotFound(_))
    ));
    let report = store.collect_garbage(&in_use, u64::MAX).unwrap();
    assert_eq!(report.removed, [ids[2].clone()]);
    assert_eq!(store.disk_usage().unwrap(), per_image);
    assert_eq!(store.list().unwrap().len(), 1);

    // The command line: ls as crictl prints it, rm by name.
    let cli = |args: &[&str]| {
        run(Command::new(env!("CARGO_BIN_EXE_skiff-kubelet"))
            .arg("--root-dir")
            .arg(scratch.path("root"))
            .arg("image")
            .args(args))
    };
    let listing = cli(&["ls"]);
    let mut lines = listing.lines();
    assert!(lines.next().unwrap().starts_with("REPOSITORY"), "{listing}");
    let row: Vec<&str> = lines.next().unwrap().split_whitespace().collect();
    assert_eq!(
        row[..3],
        ["docker.io/library/busybox", "1", &ids[0][7..20]],
        "{listing}"
    );
    cli(&["rm", "busybox:1"]);
    assert!(store.list().unwrap().is_empty());
    assert_eq!(store.disk_usage().unwrap(), 0);
}
