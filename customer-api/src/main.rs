fn main() -> anyhow::Result<()> {
    utility::runtime::main::<customer_api::CustomerApi>()
}
