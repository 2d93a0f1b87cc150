fn main() -> anyhow::Result<()> {
    utility::runtime::main::<transaction_api::TransactionApi>()
}
