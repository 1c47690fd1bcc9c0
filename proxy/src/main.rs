fn main() -> anyhow::Result<()> {
    anyhow::bail!("skiff-proxy is not built yet")
}
