//! The command line (clap derive; doc comments are the help text).

use std::path::PathBuf;

use bundle_format::Codec;
use bundle_format::elf::Arch;
use clap::{Args, Parser, Subcommand};

const EXAMPLES: &str = "\
Examples:
  sydney-pack _build/prod/rel/my_app                  # a mix release: nothing else to say
  sydney-pack _build/prod/rel/my_app --out /my_app    # choose the output file
  sydney-pack _build/prod/rel/my_app --portable       # runs in FROM scratch, on musl, on old glibc
  sydney-pack release/ --entry bin/server --name server --app-version 1.0.0
  sydney-pack doctor _build/prod/rel/my_app           # which hosts can run it
  sydney-pack inspect my_app                          # the manifest of a bundle
  sydney-pack keygen release.key                      # a key pair; then pack with --sign release.key
  sydney-pack completions bash > /etc/bash_completion.d/sydney-pack

Run the bundle: ./my_app start | daemon | stop | exec -- remote
Exit codes: 0 ok, 1 other failure, 2 bad command line, 3 not a release or not packable,
4 output not writable, 5 not a bundle (docs/SYDNEY_PACK.md).";

/// Pack a release folder (a mix release, a static server, anything with an
/// executable entry) into one executable file that unpacks itself and runs.
///
/// A mix release (a folder with releases/start_erl.data and bin/NAME) needs no
/// flags: the entry, arguments, name, version, codec and environment are
/// inferred and printed, and every flag below overrides what it names.
#[derive(Debug, Parser)]
#[command(
    name = "sydney-pack",
    version,
    long_version = crate::LONG_VERSION,
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true,
    max_term_width = 100
)]
pub struct Cli {
    /// What to do; without one, pack DIR.
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Packing, when no subcommand is named.
    #[command(flatten)]
    pub pack: PackArgs,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Pack DIR into one file (the default command)
    #[command(after_help = EXAMPLES)]
    Pack(Box<PackArgs>),
    /// Say which hosts the programs in DIR can run on, without packing
    Doctor {
        /// The release folder
        dir: PathBuf,
    },
    /// Show the manifest of a bundle without running it
    Inspect {
        /// The bundle file
        file: PathBuf,
        /// Also list every file in the payload
        #[arg(long)]
        files: bool,
    },
    /// Make a key pair for signing bundles (pack --sign)
    #[command(after_help = KEYGEN_HELP)]
    Keygen {
        /// The secret key file to write (the public key goes to KEYFILE.pub)
        #[arg(value_name = "KEYFILE")]
        secret: PathBuf,
    },
    /// Write a container image of a bundle, with no Docker daemon
    #[command(after_help = IMAGE_EXAMPLES)]
    Image(Box<ImageArgs>),
    /// Print a shell completion script
    #[command(
        after_help = "Examples:\n  sydney-pack completions bash > /etc/bash_completion.d/sydney-pack\n  \
                            sydney-pack completions zsh > \"${fpath[1]}/_sydney-pack\"\n  \
                            sydney-pack completions fish > ~/.config/fish/completions/sydney-pack.fish"
    )]
    Completions {
        /// The shell
        shell: clap_complete::Shell,
    },
}

const KEYGEN_HELP: &str = "\
Writes KEYFILE (the secret key, mode 0600: keep it off the servers, e.g. in your CI's
secret store) and KEYFILE.pub (the public key, one line, safe to publish). Never
overwrites either file; no passphrase, no prompt, so CI can run it.

Examples:
  sydney-pack keygen release.key                     # release.key + release.key.pub
  sydney-pack _build/prod/rel/my_app --sign release.key
  ./my_app verify                                    # signed by: key 1A2B... (sydney-ed25519:...)
  SYDNEY_BUNDLE_TRUSTED_KEYS=\"$(cat release.key.pub)\" ./my_app start

SYDNEY_BUNDLE_TRUSTED_KEYS lists public keys, separated by commas or spaces; when it
is set, start, exec, daemon, restart and extract refuse a bundle not signed by one of
them (exit 26; a signature that does not match: 27). The signature covers the stub,
the payload, the manifest and index, and the trailer. It protects against a replaced
or altered file, checked by something you already trust; it does not protect against
a compromised build host (README, \"Signed bundles\").";

const IMAGE_EXAMPLES: &str = "\
Examples:
  sydney-pack image my_app --out my_app.tar        # then: docker load -i my_app.tar
  sydney-pack image my_app --out my_app.tar --tag registry.example/my_app:1.2.0 --port 4000
  skopeo copy oci-archive:my_app.tar docker://registry.example/my_app:1.2.0
  sydney-pack image my_app-x86_64 my_app-aarch64 --out my_app.tar   # linux/amd64 + linux/arm64

One layer: the bundle at /app and an empty /tmp (mode 1777). Entrypoint /app, Cmd start,
user 65532, Docker's healthcheck on the bundle's `healthcheck` command. The same bundle
always gives the same image digest (created and every mtime from SOURCE_DATE_EPOCH, else 0).
The archive is an OCI image layout that docker load, podman load and skopeo accept.";

/// How to write an image.
#[derive(Debug, Args)]
pub struct ImageArgs {
    /// The bundle file; several (one release built for x86_64 and aarch64)
    /// make one multi-architecture image
    #[arg(required = true, num_args = 1..)]
    pub bundles: Vec<PathBuf>,
    /// The image archive to write
    #[arg(short, long, value_name = "FILE")]
    pub out: PathBuf,
    /// Image name [default: NAME:VERSION of the bundle]
    #[arg(long, value_name = "NAME[:TAG]")]
    pub tag: Option<String>,
    /// User the container runs as: a uid or uid:gid [default: 65532]
    #[arg(long, value_name = "UID[:GID]")]
    pub user: Option<String>,
    /// Exposed port, e.g. 8080 or 53/udp; repeatable
    #[arg(long = "port", value_name = "PORT")]
    pub ports: Vec<String>,
    /// Label in the image config; repeatable
    #[arg(long = "label", value_name = "KEY=VALUE")]
    pub labels: Vec<String>,
    /// Annotation on the manifest; repeatable
    #[arg(long = "annotation", value_name = "KEY=VALUE")]
    pub annotations: Vec<String>,
    /// org.opencontainers.image.source: where the source lives
    #[arg(long, value_name = "URL")]
    pub source: Option<String>,
    /// org.opencontainers.image.revision: the source revision
    #[arg(long, value_name = "REV")]
    pub revision: Option<String>,
    /// Leave out Docker's healthcheck
    #[arg(long)]
    pub no_healthcheck: bool,
}

/// How to pack.
#[derive(Debug, Args)]
pub struct PackArgs {
    /// The release folder, e.g. _build/prod/rel/my_app
    pub dir: Option<PathBuf>,
    /// Output file [default: ./NAME]
    #[arg(short, long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Program to run, relative to DIR [mix release: bin/NAME]
    #[arg(long, value_name = "PATH")]
    pub entry: Option<String>,
    /// Argument always passed to the entry before the user's; repeatable
    /// [mix release: start]
    #[arg(long = "arg", value_name = "ARG", allow_hyphen_values = true)]
    pub args: Vec<String>,
    /// Pass the entry no default arguments
    #[arg(long, conflicts_with = "args")]
    pub no_args: bool,
    /// Bundle name: letters, digits, . _ + - [mix release: its name]
    #[arg(long)]
    pub name: Option<String>,
    /// Bundle version, same alphabet [mix release: its version]
    #[arg(long, value_name = "VERSION")]
    pub app_version: Option<String>,
    /// Payload compression [default: gzip up to 4 MiB of files, zstd above]
    #[arg(long, value_parser = parse_codec)]
    pub codec: Option<Codec>,
    /// Compression level: gzip 1-9, zstd 1-19 [default: 9 for gzip, 19 for
    /// zstd, 9 for zstd above 64 MiB of files]
    #[arg(long, value_name = "N")]
    pub level: Option<u32>,
    /// The entry cannot run without its unpacked files: fail clearly instead
    /// of running it from memory when nothing is writable [mix release: on]
    #[arg(long, overrides_with = "no_needs_tree")]
    pub needs_tree: bool,
    /// The entry may run from memory when nothing is writable
    #[arg(long, overrides_with = "needs_tree")]
    pub no_needs_tree: bool,
    /// Environment default for the entry, used unless the variable is set
    /// when it runs; ${BUNDLE_ROOT} and ${BUNDLE_STATE_DIR} expand;
    /// repeatable [mix release: RELEASE_TMP=${BUNDLE_STATE_DIR}/tmp]
    #[arg(long, value_name = "NAME=VALUE", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// A listening socket the bundle's `daemon` supervisor holds and hands to
    /// the server (systemd protocol), for zero-downtime `upgrade`:
    /// tcp:[ADDRESS:]PORT, PORT may be $PORT; repeatable. Or `reuseport`: no
    /// socket is held, each server binds the port with SO_REUSEPORT
    #[arg(long, value_name = "SOCKET")]
    pub listen: Vec<String>,
    /// Cache root baked into the bundle, tried after SYDNEY_BUNDLE_DIR
    /// (absolute path)
    #[arg(long, value_name = "DIR")]
    pub cache_dir: Option<String>,
    /// Use this stub file instead of the embedded one
    #[arg(long, value_name = "FILE")]
    pub stub: Option<PathBuf>,
    /// Sign the bundle with this secret key file (from `sydney-pack keygen`)
    #[arg(long, value_name = "KEYFILE")]
    pub sign: Option<PathBuf>,
    /// Architecture to pack for: x86_64 or aarch64 (also amd64, arm64)
    /// [default: that of the folder's ELF programs; a folder mixing them is
    /// refused]
    #[arg(long, value_name = "ARCH", value_parser = sydney_pack::arch::parse)]
    pub target: Option<Arch>,
    /// Carry the ELF loader, shared libraries and a static shell that the
    /// folder's programs need from this machine, so the bundle runs in FROM
    /// scratch, on musl hosts and on any glibc
    #[arg(long)]
    pub portable: bool,
    /// With --portable: the static shell for #!/bin/sh scripts [default:
    /// /bin/busybox, from busybox-static]
    #[arg(long, value_name = "FILE", requires = "portable")]
    pub shell: Option<PathBuf>,
}

fn parse_codec(value: &str) -> Result<Codec, String> {
    Codec::from_name(value).ok_or_else(|| format!("unknown codec {value:?}: use gzip or zstd"))
}

fn parse_env(value: &str) -> Result<(String, String), String> {
    sydney_pack::plan::parse_env(value)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn a_folder_alone_means_pack() {
        let cli = Cli::try_parse_from(["sydney-pack", "rel", "--codec", "zstd"]).unwrap();
        assert!(cli.command.is_none());
        assert_eq!(cli.pack.dir, Some(PathBuf::from("rel")));
        assert_eq!(cli.pack.codec, Some(Codec::Zstd));
        let cli = Cli::try_parse_from(["sydney-pack", "inspect", "app"]).unwrap();
        assert!(matches!(cli.command, Some(Command::Inspect { .. })));
    }
}
