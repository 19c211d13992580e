"""The test servers themselves: PostgreSQL (given or throwaway) and moto over real HTTP."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import boto3
import psycopg
import pytest
import servers
from sqlalchemy import create_engine, inspect, text
from sqlalchemy.engine import make_url

pytestmark = pytest.mark.timeout(120)


# ---------------------------------------------------------------------------------------------
# PostgreSQL


@pytest.mark.postgres
def test_postgres_answers_select_1(postgres_server_url: str) -> None:
    assert postgres_server_url.startswith("postgresql+psycopg://")
    engine = create_engine(postgres_server_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("select 1")).scalar_one() == 1
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_fresh_database_is_empty_and_writable(fresh_postgres_url: str) -> None:
    engine = create_engine(fresh_postgres_url)
    try:
        with engine.begin() as conn:
            assert conn.execute(text("select current_database()")).scalar_one() == (
                make_url(fresh_postgres_url).database
            )
            assert inspect(conn).get_table_names() == []
            conn.execute(text("create table t (id int primary key)"))
            conn.execute(text("insert into t values (1), (2)"))
        with engine.connect() as conn:
            assert conn.execute(text("select count(*) from t")).scalar_one() == 2
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_fresh_databases_are_isolated(postgres_server_url: str, fresh_postgres_url: str) -> None:
    other_url = servers.create_database(postgres_server_url)
    try:
        with psycopg.connect(servers.libpq_url(fresh_postgres_url), autocommit=True) as conn:
            conn.execute("create table only_here (x int)")
        with psycopg.connect(servers.libpq_url(other_url)) as conn:
            found = conn.execute("select to_regclass('public.only_here')").fetchone()
            assert found == (None,)
        assert make_url(other_url).database != make_url(fresh_postgres_url).database
    finally:
        name = make_url(other_url).database
        assert name is not None
        servers.drop_database(postgres_server_url, name)
    with psycopg.connect(servers.libpq_url(postgres_server_url)) as conn:
        row = conn.execute("select count(*) from pg_database where datname = %s", (name,))
        assert row.fetchone() == (0,)


@pytest.mark.postgres
def test_fresh_database_drop_survives_open_connections(postgres_server_url: str) -> None:
    url = servers.create_database(postgres_server_url)
    name = make_url(url).database
    # a test that "forgot" to close its connection:
    leftover = psycopg.connect(servers.libpq_url(url))
    try:
        servers.drop_database(postgres_server_url, name or "")
    finally:
        leftover.close()
    with psycopg.connect(servers.libpq_url(postgres_server_url)) as conn:
        row = conn.execute("select count(*) from pg_database where datname = %s", (name,))
        assert row.fetchone() == (0,)


# ---------------------------------------------------------------------------------------------
# moto


def test_s3_round_trip_with_pagination(s3_endpoint: str) -> None:
    s3 = boto3.client("s3")
    assert s3.meta.endpoint_url == s3_endpoint  # from AWS_ENDPOINT_URL, not real AWS
    s3.create_bucket(Bucket="cur-ray-test")
    s3.put_object(Bucket="cur-ray-test", Key="hello.txt", Body=b"hello, moto")
    body = s3.get_object(Bucket="cur-ray-test", Key="hello.txt")["Body"].read()
    assert body == b"hello, moto"

    keys = [f"many/{i:05d}.txt" for i in range(1100)]
    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(lambda k: s3.put_object(Bucket="cur-ray-test", Key=k, Body=k.encode()), keys))

    pages = list(
        s3.get_paginator("list_objects_v2").paginate(Bucket="cur-ray-test", Prefix="many/")
    )
    assert len(pages) == 2  # 1000 + 100: the paginator really followed a continuation token
    listed = [obj["Key"] for page in pages for obj in page.get("Contents", [])]
    assert listed == keys


def test_moto_state_is_reset_between_tests(s3_endpoint: str) -> None:
    s3 = boto3.client("s3")
    assert s3.list_buckets()["Buckets"] == []
    s3.create_bucket(Bucket="left-behind")  # must be gone for the next test using s3_endpoint


def test_moto_state_is_reset_between_tests_again(s3_endpoint: str) -> None:
    assert boto3.client("s3").list_buckets()["Buckets"] == []


def test_sts_assume_role_credentials_work_on_same_endpoint(s3_endpoint: str) -> None:
    sts = boto3.client("sts")
    assert sts.meta.endpoint_url == s3_endpoint
    role_arn = "arn:aws:iam::123456789012:role/cur-ray-reader"
    creds = sts.assume_role(RoleArn=role_arn, RoleSessionName="cur-ray-test")["Credentials"]
    assert creds["AccessKeyId"] != "testing"

    assumed = boto3.Session(
        aws_access_key_id=creds["AccessKeyId"],
        aws_secret_access_key=creds["SecretAccessKey"],
        aws_session_token=creds["SessionToken"],
    )
    identity = assumed.client("sts").get_caller_identity()
    assert identity["Arn"] == "arn:aws:sts::123456789012:assumed-role/cur-ray-reader/cur-ray-test"
    s3 = assumed.client("s3")
    assert s3.meta.endpoint_url == s3_endpoint
    s3.create_bucket(Bucket="with-assumed-role")
    assert [b["Name"] for b in s3.list_buckets()["Buckets"]] == ["with-assumed-role"]
