#!/bin/sh
# Runs "$@" (a pip install, the template download) trusting, besides the system's CA certificates, the extra
# bundle given to the build as the BuildKit secret `pip_ca` (docker build --secret id=pip_ca,src=FILE), e.g.
# the CA of a TLS-intercepting proxy. The secret is mounted for one RUN step only and the combined bundle is
# removed before the step ends, so neither is in any layer of the image. Without the secret: "$@" as is.
set -eu
secret=/run/secrets/pip_ca
if [ -s "${secret}" ]; then
    bundle=$(mktemp)
    trap 'rm -f "${bundle}"' EXIT
    cat /etc/ssl/certs/ca-certificates.crt "${secret}" > "${bundle}"
    # pip, requests (TemplateFlow's download) and Python's ssl module
    export PIP_CERT="${bundle}" REQUESTS_CA_BUNDLE="${bundle}" SSL_CERT_FILE="${bundle}"
fi
"$@"
