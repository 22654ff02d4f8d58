"""Verifies webhook deliveries Tollgate made with the Standard Webhooks reference library (PyPI `standardwebhooks`),
as a customer's endpoint would.

Usage: verify.py SECRET DELIVERIES.json, where the file holds [{"headers": {...}, "body": "..."}]. Prints how many
verified; exits non-zero on the first that does not.
"""

import json
import sys

from standardwebhooks.webhooks import Webhook


def main():
    secret, path = sys.argv[1], sys.argv[2]
    with open(path, encoding='utf-8') as f:
        deliveries = json.load(f)
    webhook = Webhook(secret)
    for delivery in deliveries:
        payload = webhook.verify(delivery['body'].encode('utf-8'), delivery['headers'])
        if payload != json.loads(delivery['body']):
            raise SystemExit(f'verified payload differs: {payload!r}')
    print(len(deliveries))


if __name__ == '__main__':
    main()
