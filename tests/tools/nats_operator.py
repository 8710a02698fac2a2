#!/usr/bin/env python3
"""An engine in operator (JWT) mode for tests/fleet.rs: makes an operator,
a system account, an account with JetStream, and a user of it, with the
maintained `nats-jwt` and `nkeys` packages (pip install nats-jwt), and
writes into DIR:

- nats.conf: the operator, the system account and both accounts
  preloaded (resolver MEMORY), for nats-server -c;
- penaltybox.creds: the user's JWT and seed, as `nsc generate creds`
  writes them, for fleet.creds_file.

Usage: nats_operator.py DIR
"""

import sys
from pathlib import Path

from nats_jwt.nkeys_ext import create_account_pair, create_operator_pair, create_user_pair
from nats_jwt.v2.account_claims import AccountClaims
from nats_jwt.v2.operator_claims import OperatorClaims
from nats_jwt.v2.user_claims import UserClaims

UNLIMITED = -1


def main(out: Path) -> None:
    operator = create_operator_pair()
    system = create_account_pair()
    account = create_account_pair()
    user = create_user_pair()

    operator_claims = OperatorClaims(operator.public_key.decode(), "penaltybox-test")
    operator_claims.nats.system_account = system.public_key.decode()
    operator_jwt = operator_claims.encode(operator)

    system_jwt = AccountClaims(system.public_key.decode(), "SYS").encode(operator)

    account_claims = AccountClaims(account.public_key.decode(), "PENALTYBOX")
    limits = account_claims.nats.limits
    limits.memory_storage = UNLIMITED
    limits.disk_storage = UNLIMITED
    limits.streams = UNLIMITED
    limits.consumer = UNLIMITED
    account_jwt = account_claims.encode(operator)

    user_claims = UserClaims(user.public_key.decode(), "penaltybox")
    user_jwt = user_claims.encode(account)

    (out / "nats.conf").write_text(
        f'operator: "{operator_jwt}"\n'
        f"system_account: {system.public_key.decode()}\n"
        "resolver: MEMORY\n"
        "resolver_preload: {\n"
        f'  {system.public_key.decode()}: "{system_jwt}"\n'
        f'  {account.public_key.decode()}: "{account_jwt}"\n'
        "}\n"
    )
    creds = out / "penaltybox.creds"
    creds.write_text(
        "-----BEGIN NATS USER JWT-----\n"
        f"{user_jwt}\n"
        "------END NATS USER JWT------\n\n"
        "************************* IMPORTANT *************************\n"
        "NKEY Seed printed below can be used to sign and prove identity.\n"
        "NKEYs are sensitive and should be treated as secrets.\n\n"
        "-----BEGIN USER NKEY SEED-----\n"
        f"{user.seed.decode()}\n"
        "------END USER NKEY SEED------\n\n"
        "*************************************************************\n"
    )
    creds.chmod(0o600)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    main(Path(sys.argv[1]))
