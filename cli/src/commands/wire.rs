//! `moat wire`: encode/decode MsgPack in the vectors' JSON notation.

#[derive(clap::Subcommand)]
pub enum Command {
    /// Decode hex bytes and print the value as JSON.
    Decode { hex: String },
    /// Encode a JSON value (vector notation) and print the hex.
    Encode { json: String },
}

pub fn run(_cmd: Command) -> anyhow::Result<()> {
    anyhow::bail!("`moat wire` is not implemented yet")
}
