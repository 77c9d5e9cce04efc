defmodule Mix.Tasks.SydneyBundle.Pack do
  use Mix.Task

  @shortdoc "Packs the assembled release into one executable file (sydney-pack)"

  @moduledoc """
  Packs a release into one executable file with `sydney-pack`.

  Normally this runs as a release step, so `mix release` gives the file:

      # mix.exs, in project/0
      deps: [{:sydney_bundle, path: "../sydney-bundle/integrations/mix", runtime: false}],
      releases: [
        my_app: [
          steps: [:assemble, &SydneyBundle.pack/1],
          sydney_bundle: [codec: :zstd]
        ]
      ]

      $ MIX_ENV=prod mix release
      $ _build/prod/bundle/my_app start

  Run as a task, it packs a release that `mix release` already assembled:

      $ MIX_ENV=prod mix sydney_bundle.pack            # the default release
      $ MIX_ENV=prod mix sydney_bundle.pack my_app     # a named one

  ## Options (`sydney_bundle: [...]` in the release config)

    * `:out` - the bundle file (default `_build/MIX_ENV/bundle/NAME`)
    * `:sydney_pack` - path of the `sydney-pack` binary (default: the
      `SYDNEY_PACK` environment variable, else `sydney-pack` on PATH)
    * `:codec` - `:gzip` or `:zstd` (default: gzip up to 4 MiB of files,
      zstd above)
    * `:level` - compression level
    * `:args` - default arguments for `bin/NAME` (default `["start"]`;
      `[]` for none)
    * `:env` - environment defaults, e.g. `[RELEASE_TMP: "/run/my_app"]`
      (default `RELEASE_TMP=${BUNDLE_STATE_DIR}/tmp`)
    * `:needs_tree` - `false` to allow running from memory
    * `:cache_dir` - a default cache root baked into the bundle
    * `:portable` - `true` passes `--portable`: the bundle carries the
      release's loader, libraries and a static shell (busybox-static on the
      build machine) and runs in FROM scratch, on musl hosts, on any glibc
    * `:sign` - a secret key file from `sydney-pack keygen`: the bundle is
      signed with it (`--sign`; README, "Signed bundles")
    * `:extra_args` - more `sydney-pack` flags, passed as given

  Everything else `sydney-pack` infers from the release: the entry
  `bin/NAME`, the name and the version.

  ## Exit codes

    * 127 - `sydney-pack` was not found (PATH, `SYDNEY_PACK`, `:sydney_pack`)
    * 2 - an unknown or invalid `sydney_bundle` option
    * otherwise `sydney-pack`'s own code: 3 not a release, 4 output not
      writable, 2 bad flag (see its docs/SYDNEY_PACK.md)
  """

  @impl true
  def run(args) do
    Mix.Task.run("loadpaths", [])
    config = Mix.Project.config()

    name =
      case args do
        [] -> nil
        [name] -> String.to_atom(name)
        _ -> Mix.raise("usage: mix sydney_bundle.pack [RELEASE_NAME]")
      end

    release = Mix.Release.from_config!(name, config, [])

    unless File.exists?(Path.join(release.path, "releases/start_erl.data")) do
      Mix.raise("#{release.path} holds no assembled release; run `mix release` first")
    end

    SydneyBundle.pack(release)
    :ok
  end
end
