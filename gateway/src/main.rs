fn main() -> anyhow::Result<()> {
    utility::runtime::main::<gateway::Gateway>()
}
