defmodule SydneyBundle do
  @moduledoc """
  A `mix release` step that packs the assembled release into one
  executable file with `sydney-pack`.

      # mix.exs
      def project do
        [
          app: :my_app,
          # ...
          deps: [{:sydney_bundle, path: "../sydney-bundle/integrations/mix", runtime: false}],
          releases: [
            my_app: [
              steps: [:assemble, &SydneyBundle.pack/1],
              sydney_bundle: [codec: :zstd]
            ]
          ]
        ]
      end

  `MIX_ENV=prod mix release` then writes `_build/prod/bundle/my_app`, which
  runs anywhere the release's runtime can: `./my_app start`, `daemon`,
  `stop`, `exec -- remote`. See `mix help sydney_bundle.pack` for the
  options and exit codes.
  """

  @known [:sydney_pack, :out, :codec, :level, :args, :env, :needs_tree, :cache_dir, :portable, :sign, :extra_args]

  @doc """
  The release step: packs `release.path` and returns the release unchanged.

  Options come from `sydney_bundle: [...]` in the release's config.
  """
  @spec pack(Mix.Release.t()) :: Mix.Release.t()
  def pack(%Mix.Release{} = release) do
    options = Keyword.get(release.options, :sydney_bundle, [])
    check_options!(options)
    executable = find_sydney_pack!(options)
    out = out_path(release, options)
    File.mkdir_p!(Path.dirname(out))
    args = [release.path, "--out", out] ++ flags(options)
    Mix.shell().info([:green, "* packing ", :reset, "#{release.name} into #{Path.relative_to_cwd(out)}"])

    case System.cmd(executable, args, into: IO.stream(:stdio, :line)) do
      {_, 0} ->
        release

      {_, code} ->
        fail(code, "sydney-pack failed (exit #{code}, see its message above)")
    end
  end

  @doc """
  Where the bundle goes: the `:out` option, else `_build/ENV/bundle/NAME`.
  """
  @spec out_path(Mix.Release.t(), keyword()) :: Path.t()
  def out_path(release, options) do
    case Keyword.fetch(options, :out) do
      {:ok, out} -> Path.expand(out)
      :error -> Path.join([Mix.Project.build_path(), "bundle", Atom.to_string(release.name)])
    end
  end

  @doc false
  def flags(options) do
    Enum.flat_map(options, fn
      {:codec, codec} when codec in [:gzip, :zstd] -> ["--codec", Atom.to_string(codec)]
      {:level, level} when is_integer(level) -> ["--level", Integer.to_string(level)]
      {:args, []} -> ["--no-args"]
      {:args, args} when is_list(args) -> Enum.flat_map(args, &["--arg", to_string(&1)])
      {:env, env} -> Enum.flat_map(env, fn {name, value} -> ["--env", "#{name}=#{value}"] end)
      {:needs_tree, true} -> ["--needs-tree"]
      {:needs_tree, false} -> ["--no-needs-tree"]
      {:cache_dir, dir} -> ["--cache-dir", to_string(dir)]
      {:portable, true} -> ["--portable"]
      {:portable, false} -> []
      {:sign, key} when is_binary(key) -> ["--sign", Path.expand(key)]
      {:extra_args, args} when is_list(args) -> Enum.map(args, &to_string/1)
      {key, value} when key in [:sydney_pack, :out] and is_binary(value) -> []
      {key, value} -> fail(2, "invalid sydney_bundle option #{key}: #{inspect(value)}")
    end)
  end

  defp check_options!(options) do
    case Keyword.keys(options) -- @known do
      [] ->
        :ok

      unknown ->
        fail(2, "unknown sydney_bundle option #{inspect(hd(unknown))}; known: #{inspect(@known)}")
    end
  end

  # The `sydney_pack:` option, else `SYDNEY_PACK` in the environment, else
  # `sydney-pack` on PATH.
  defp find_sydney_pack!(options) do
    configured = Keyword.get(options, :sydney_pack) || System.get_env("SYDNEY_PACK")

    found =
      case configured do
        nil -> System.find_executable("sydney-pack")
        path -> if File.regular?(path), do: Path.expand(path)
      end

    found ||
      fail(
        127,
        case configured do
          nil ->
            "sydney-pack not found on PATH; install it (cargo xtask dist builds a static one) " <>
              "or set sydney_bundle: [sydney_pack: \"/path/to/sydney-pack\"]"

          path ->
            "sydney-pack not found at #{path}; fix the sydney_pack option or SYDNEY_PACK"
        end
      )
  end

  # One line, then the documented exit code (`exit({:shutdown, code})`
  # makes `mix` exit with it).
  defp fail(code, message) do
    Mix.shell().error("sydney_bundle: error: #{message}")
    exit({:shutdown, code})
  end
end
