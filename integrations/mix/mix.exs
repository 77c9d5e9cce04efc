defmodule SydneyBundle.MixProject do
  use Mix.Project

  # No dependencies: the step only runs the `sydney-pack` binary, so the
  # package builds offline (no hex).
  def project do
    [
      app: :sydney_bundle,
      version: "0.1.0",
      elixir: "~> 1.14",
      description: "A mix release step that packs the release into one executable file with sydney-pack",
      deps: []
    ]
  end

  def application do
    [extra_applications: []]
  end
end
