# sydney on Nomad: the bundle itself as the artifact (no image, no
# registry), checked against its SHA-256 and run by the isolated `exec`
# driver. See deploy/README.md.
#
#   nomad job run \
#     -var bundle_url=https://releases.example/sydney/0.1.0/sydney-bundle \
#     -var bundle_sha256=$(sha256sum target/bundle/sydney-bundle | cut -d' ' -f1) \
#     deploy/nomad/sydney.nomad.hcl
#
# `${NOMAD_...}` names in strings are filled in by Nomad when the task
# starts; `var.` names come from the -var flags.

variable "bundle_url" {
  type        = string
  description = "Where Nomad clients download the bundle (http, https, s3, ...)."
}

variable "bundle_sha256" {
  type        = string
  description = "SHA-256 of the bundle file, 64 hex digits (sha256sum prints it)."

  validation {
    condition     = can(regex("^[0-9a-f]{64}$", var.bundle_sha256))
    error_message = "The bundle_sha256 value must be 64 lower-case hex digits: use the first field of `sha256sum sydney-bundle`."
  }
}

job "sydney" {
  type = "service"

  group "sydney" {
    count = 3

    network {
      port "http" {}
    }

    # One allocation at a time; a new one must pass its check for 10 s, and
    # a deployment that does not become healthy goes back to the last good
    # version.
    update {
      max_parallel     = 1
      health_check     = "checks"
      min_healthy_time = "10s"
      healthy_deadline = "2m"
      auto_revert      = true
    }

    service {
      name     = "sydney"
      port     = "http"
      provider = "nomad"

      check {
        type     = "http"
        path     = "/"
        interval = "10s"
        timeout  = "3s"
      }
    }

    task "sydney" {
      driver = "exec"

      # The single file is exactly what an artifact is: downloaded once per
      # allocation, verified, and run.
      artifact {
        source      = var.bundle_url
        destination = "local/sydney-bundle"
        mode        = "file"

        options {
          checksum = "sha256:${var.bundle_sha256}"
        }
      }

      config {
        command = "local/sydney-bundle"
        args    = ["start", "--", "--bind", "${NOMAD_IP_http}", "--port", "${NOMAD_PORT_http}", "--shutdown-timeout", "10"]
      }

      env {
        # The cache inside the allocation's own task directory.
        SYDNEY_BUNDLE_DIR = "${NOMAD_TASK_DIR}/cache"
      }

      # Longer than the server's drain (--shutdown-timeout 10).
      kill_timeout = "12s"

      resources {
        cpu    = 100
        memory = 64
      }
    }
  }
}
