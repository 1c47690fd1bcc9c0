//! `skiff-kubelet image …`: the node operator's view of the image store.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::busybox::BusyboxImage;
use super::{ImageStore, PullOptions, parse_reference};

/// `skiff-kubelet image` subcommands.
#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Load the images of an OCI archive or docker-archive (as `ctr images export` and
    /// `docker save` write them).
    Import {
        /// The archive file.
        archive: PathBuf,
    },
    /// Pull an image from its registry.
    Pull {
        /// A registry (HOST:PORT) reached over plain HTTP; repeatable.
        #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
        insecure_registries: Vec<String>,
        /// USERNAME:PASSWORD for the image's registry.
        #[arg(long)]
        creds: Option<String>,
        reference: String,
    },
    /// List images (REPOSITORY TAG IMAGE ID SIZE).
    Ls,
    /// Remove images by name, digest reference or id.
    Rm {
        #[arg(required = true)]
        references: Vec<String>,
    },
    /// Build a busybox image archive from the host's static /bin/busybox.
    BuildBusybox {
        /// Where to write the OCI archive.
        #[arg(long, short)]
        output: PathBuf,
        /// The static busybox binary to use.
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
        /// NAME:TAG of the image.
        reference: String,
    },
}

/// Runs one `image` subcommand against the image store under `root_dir`.
pub async fn run(root_dir: &Path, command: ImageCommand) -> anyhow::Result<()> {
    // Progress goes to stderr; whoever set up logging first keeps it.
    let _ = tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .try_init();
    match command {
        ImageCommand::BuildBusybox {
            output,
            busybox,
            reference,
        } => {
            let image = BusyboxImage {
                busybox,
                ..BusyboxImage::new(&reference)
            }
            .write(&output)
            .with_context(|| format!("building {reference}"))?;
            println!("{} {}", output.display(), image.id);
        }
        ImageCommand::Import { archive } => {
            let store = ImageStore::open(root_dir)?;
            let images = store
                .import(&archive)
                .with_context(|| format!("importing {}", archive.display()))?;
            for image in images {
                let names = if image.repo_tags.is_empty() {
                    "<none>".to_string()
                } else {
                    image.repo_tags.join(", ")
                };
                println!("imported {names} {}", image.id);
            }
        }
        ImageCommand::Pull {
            insecure_registries,
            creds,
            reference,
        } => {
            let mut options = PullOptions {
                insecure_registries,
                ..PullOptions::default()
            };
            if let Some(creds) = creds {
                let (user, password) = creds
                    .split_once(':')
                    .context("--creds takes USERNAME:PASSWORD")?;
                let registry = parse_reference(&reference)?.resolve_registry().to_string();
                options
                    .auth
                    .insert(registry, (user.to_string(), password.to_string()));
            }
            let store = ImageStore::open(root_dir)?;
            let image = store.pull(&reference, &options).await?;
            println!("Image is up to date for {}", image.id);
        }
        ImageCommand::Ls => {
            let store = ImageStore::open(root_dir)?;
            print!("{}", table(&store.list()?));
        }
        ImageCommand::Rm { references } => {
            let store = ImageStore::open(root_dir)?;
            for reference in references {
                let removed = store
                    .remove(&reference)
                    .with_context(|| format!("removing {reference}"))?;
                if removed.is_empty() {
                    println!("Untagged: {reference}");
                }
                for id in removed {
                    println!("Deleted: {id}");
                }
            }
        }
    }
    Ok(())
}

/// `crictl images` style: one row per repository:tag (`<none>` for an unnamed image).
fn table(images: &[super::Image]) -> String {
    let mut rows = vec![[
        "REPOSITORY".to_string(),
        "TAG".into(),
        "IMAGE ID".into(),
        "SIZE".into(),
    ]];
    for image in images {
        let short_id = image
            .id
            .trim_start_matches("sha256:")
            .chars()
            .take(13)
            .collect::<String>();
        let size = human_size(image.size);
        let names: Vec<(String, String)> = if image.repo_tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            image
                .repo_tags
                .iter()
                .map(|t| match t.rsplit_once(':') {
                    Some((repo, tag)) if !tag.contains('/') => (repo.to_string(), tag.to_string()),
                    _ => (t.clone(), "<none>".into()),
                })
                .collect()
        };
        for (repo, tag) in names {
            rows.push([repo, tag, short_id.clone(), size.clone()]);
        }
    }
    let widths: Vec<usize> = (0..4)
        .map(|c| rows.iter().map(|r| r[c].len()).max().unwrap_or(0))
        .collect();
    rows.iter()
        .map(|r| {
            let line = (0..4)
                .map(|c| format!("{:<w$}", r[c], w = widths[c]))
                .collect::<Vec<_>>()
                .join("   ");
            format!("{}\n", line.trim_end())
        })
        .collect()
}

/// Sizes as crictl prints them (`4.26MB`).
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < UNITS.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes}B")
    } else {
        format!("{value:.3}")
            .trim_end_matches('0')
            .trim_end_matches('.')
            .to_string()
            + UNITS[unit]
    }
}

#[cfg(test)]
mod tests {
    use super::human_size;

    #[test]
    fn sizes_as_crictl() {
        assert_eq!(human_size(512), "512B");
        assert_eq!(human_size(4_260_000), "4.26MB");
        assert_eq!(human_size(2_000_000_000), "2GB");
    }
}
