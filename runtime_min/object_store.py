"""Model stores on S3 (or any S3-compatible service): `create-model-store --model-store s3://BUCKET/PREFIX`
writes the repository locally, then uploads it where a stock Triton reads it with
`tritonserver --model-repository s3://...`.

Addresses, as Triton takes them:
    s3://BUCKET/PREFIX                         AWS (or the endpoint in $AWS_ENDPOINT_URL, which boto3 reads)
    s3://http[s]://HOST:PORT/BUCKET/PREFIX     an S3-compatible endpoint named in the address

Credentials and region come from boto3's usual chain (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_DEFAULT_REGION, ~/.aws), which Triton's AWS SDK reads too. The upload writes each model's files,
its config.pbtxt last (a Triton polling the store never sees a configuration before its files), then
removes what the previous upload left under that model and no longer belongs to it. S3 has no atomic
rename, so a reader that loads a model mid-upload can see a mix; load after the command returns.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from nimbuild.errors import NimbuildError

ENDPOINT_ENV = "AWS_ENDPOINT_URL"
_ENDPOINT_IN_URI = re.compile(r"^s3://(https?://[^/]+)/(.+)$")


@dataclass(frozen=True)
class S3Location:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty
    endpoint: str | None

    @property
    def triton_uri(self) -> str:
        """The address to give `tritonserver --model-repository`."""
        path = "/".join(p for p in (self.bucket, self.prefix) if p)
        return f"s3://{self.endpoint}/{path}" if self.endpoint else f"s3://{path}"


def is_object_store(uri: str) -> bool:
    return uri.startswith(("s3://", "gs://", "as://"))


def parse(uri: str) -> S3Location:
    if uri.startswith(("gs://", "as://")):
        raise NimbuildError(f"{uri}: only s3:// model stores are written (Google Cloud Storage and Azure are not "
                            "supported yet); write to a directory and copy it with the cloud's own tool")
    endpoint = os.environ.get(ENDPOINT_ENV) or None
    if match := _ENDPOINT_IN_URI.match(uri):
        endpoint, rest = match.group(1), match.group(2)
    else:
        rest = uri[len("s3://"):]
    bucket, _, prefix = rest.partition("/")
    if not re.fullmatch(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]", bucket or ""):
        raise NimbuildError(f"{uri}: expected s3://BUCKET/PREFIX (or s3://http://HOST:PORT/BUCKET/PREFIX); "
                            f"{bucket!r} is not a valid bucket name")
    return S3Location(bucket, prefix.strip("/"), endpoint.rstrip("/") if endpoint else None)


def upload(local: Path, models: list[str], where: S3Location) -> int:
    """Upload the named models of the local repository; the number of files sent."""
    client = _client(where)
    sent = 0
    for model in models:
        root = local / model
        files = sorted((p for p in root.rglob("*") if p.is_file()), key=lambda p: (p.name == "config.pbtxt", str(p)))
        keys = set()
        for path in files:
            key = _key(where, f"{model}/{path.relative_to(root).as_posix()}")
            _call(where, f"uploading {key}", lambda p=path, k=key: client.upload_file(str(p), where.bucket, k))
            keys.add(key)
            sent += 1
        stale = [k for k in _keys(client, where, _key(where, model + "/")) if k not in keys]
        for start in range(0, len(stale), 1000):  # delete_objects takes at most 1,000 keys
            batch = [{"Key": k} for k in stale[start:start + 1000]]
            _call(where, "removing stale files", lambda b=batch: client.delete_objects(
                Bucket=where.bucket, Delete={"Objects": b, "Quiet": True}))
    return sent


def _key(where: S3Location, rel: str) -> str:
    return f"{where.prefix}/{rel}" if where.prefix else rel


def _keys(client, where: S3Location, prefix: str) -> list[str]:
    pages = _call(where, "listing the store", lambda: list(client.get_paginator("list_objects_v2").paginate(
        Bucket=where.bucket, Prefix=prefix)))
    return [o["Key"] for page in pages for o in page.get("Contents") or []]


def _client(where: S3Location):
    try:
        import boto3
        from botocore.config import Config
    except ImportError:
        raise NimbuildError("s3:// model stores need boto3: pip install 'nimbuild[s3]'") from None
    config = Config(retries={"max_attempts": 5, "mode": "standard"}, connect_timeout=10, read_timeout=60)
    return boto3.client("s3", endpoint_url=where.endpoint, config=config)


def _call(where: S3Location, what: str, call):
    """One S3 call; what boto3 raises (no credentials, no bucket, unreachable) becomes one line."""
    from boto3.exceptions import S3UploadFailedError
    from botocore.exceptions import BotoCoreError, ClientError

    try:
        return call()
    except S3UploadFailedError as e:  # boto3's transfer wraps the ClientError into its message
        raise NimbuildError(f"{where.triton_uri}: {what} failed: {e}") from None
    except ClientError as e:
        error = e.response.get("Error", {})
        raise NimbuildError(f"{where.triton_uri}: {what} failed: {error.get('Code', '?')} "
                            f"({error.get('Message') or 'no message'})") from None
    except (BotoCoreError, OSError) as e:
        raise NimbuildError(f"{where.triton_uri}: {what} failed: {type(e).__name__}: {e}") from None
