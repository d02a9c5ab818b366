"""An OpenID Connect relying party that knows nothing of Signet.

Given only an issuer URL and a token, it does what OIDC libraries and
gateways do: fetch {issuer}/.well-known/openid-configuration (OpenID Connect
Discovery 1.0, section 4), check the metadata with authlib's own validators
for the members Signet publishes, fetch the JWKS the document names, and
verify the token's signature, `iss` and `exp` with authlib.

Usage: python discover_and_verify.py ISSUER TOKEN [CA_PEM]
Prints the verified claims as JSON; exits 1 with the reason otherwise.
"""

import json
import sys
import warnings

import requests
from authlib.oidc.discovery import OpenIDProviderMetadata, get_well_known_url

warnings.simplefilter("ignore")  # authlib.jose's deprecation notice
from authlib.jose import JsonWebKey, JsonWebToken  # noqa: E402


def main(issuer, token, ca=True):
    url = get_well_known_url(issuer, external=True)
    resp = requests.get(url, verify=ca, timeout=10)
    resp.raise_for_status()
    metadata = OpenIDProviderMetadata(resp.json())
    # Signet is not an authorization server (no authorization or token
    # endpoint): check every member it publishes, with authlib's rules.
    metadata.validate_issuer()
    metadata.validate_jwks_uri()
    metadata.validate_response_types_supported()
    metadata.validate_subject_types_supported()
    metadata.validate_id_token_signing_alg_values_supported()
    # OIDC Discovery 4.3: the issuer in the document must be the one used.
    if metadata["issuer"] != issuer:
        raise ValueError(f"issuer mismatch: {metadata['issuer']!r} != {issuer!r}")
    jwks = requests.get(metadata["jwks_uri"], verify=ca, timeout=10)
    jwks.raise_for_status()
    keys = JsonWebKey.import_key_set(jwks.json())
    algs = metadata["id_token_signing_alg_values_supported"]
    claims = JsonWebToken(algs).decode(
        token,
        keys,
        claims_options={"iss": {"essential": True, "value": issuer}},
    )
    claims.validate()
    return claims


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    try:
        claims = main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) == 4 else True)
    except Exception as e:  # noqa: BLE001 - the reason is the output
        print(f"refused: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
    print(json.dumps(dict(claims), sort_keys=True))
