"""The archive e2e test's view of an S3 archive (tests/tests/archive.rs): create the bucket,
list the files, and count the rows with DuckDB. Runs in target/test-rig/archive-venv
(scripts/archive-requirements.txt). Every command prints one JSON value.

  archive_check.py create-bucket ENDPOINT BUCKET
  archive_check.py list ENDPOINT BUCKET PREFIX
  archive_check.py count ENDPOINT BUCKET PREFIX DEVICE_PREFIX
"""
import json
import os
import sys
import tempfile

import boto3
import duckdb


def client(endpoint):
    # moto takes any credentials.
    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                        aws_access_key_id="test", aws_secret_access_key="test")


def keys(s3, bucket, prefix):
    found = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        found += [item["Key"] for item in page.get("Contents", [])]
    return sorted(found)


def count(s3, bucket, prefix, device_prefix):
    """Download every file under PREFIX and count with DuckDB: rows, distinct (topic,
    partition, offset), and distinct (device, seq) of the telemetry readings of devices
    whose id starts with DEVICE_PREFIX."""
    with tempfile.TemporaryDirectory() as local:
        files = keys(s3, bucket, prefix)
        for key in files:
            path = os.path.join(local, key)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            s3.download_file(bucket, key, path)
        if not files:
            return {"files": 0, "rows": 0, "distinct_offsets": 0, "readings": 0}
        rows, offsets, readings = duckdb.connect().execute(f"""
            SELECT count(*),
                   count(DISTINCT (topic, "partition", "offset")),
                   count(DISTINCT (device, seq)) FILTER (WHERE kind = 'telemetry'
                                                         AND starts_with(device, '{device_prefix}'))
            FROM read_parquet('{local}/**/*.parquet', hive_partitioning = true)
        """).fetchone()
        return {"files": len(files), "rows": rows, "distinct_offsets": offsets, "readings": readings}


def main(command, endpoint, bucket, *rest):
    s3 = client(endpoint)
    if command == "create-bucket":
        s3.create_bucket(Bucket=bucket)
        result = {"created": bucket}
    elif command == "list":
        result = keys(s3, bucket, rest[0])
    elif command == "count":
        result = count(s3, bucket, rest[0], rest[1])
    else:
        raise SystemExit(f"unknown command {command}")
    print(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
