"""The templates as a reviewer reads them: lint-clean, checkov-clean, and the security properties hold."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from playbook.config import load_config
from playbook.errors import PlaybookError
from playbook.settings import PROJECT_ROOT
from playbook.templates import (
    RDS_CA_BUNDLE,
    RDS_CA_BUNDLE_FILE,
    RDS_CA_BUNDLE_ON_LAMBDA,
    STACKS,
    TEMPLATE_DIR,
    proxy_nginx_conf,
    render_all,
    render_nginx_conf,
    render_pipeline,
    render_proxy,
    reservations,
    validate_cidrs,
    write_rendered,
)

CFN_LINT = str(Path(sys.executable).parent / "cfn-lint")
CHECKOV = PROJECT_ROOT / ".venv-tools" / "bin" / "checkov"
ALLOW = ["203.0.113.10/32", "198.51.100.0/24"]


@pytest.fixture(scope="module")
def templates() -> dict[str, dict]:
    return render_all(load_config(), ALLOW)


@pytest.fixture(scope="module")
def rendered_dir(templates, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    write_rendered(templates, out)
    return out


@pytest.fixture(scope="module")
def reserving_dir(tmp_path_factory) -> Path:
    """The templates rendered with reserved concurrency on, as `provision --reserved-concurrency` does."""
    out = tmp_path_factory.mktemp("reserving")
    write_rendered(render_all(load_config(), ALLOW, reserved_concurrency=True), out)
    return out


def resources(template: dict, rtype: str) -> dict[str, dict]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == rtype}


def walk(node):
    yield node
    if isinstance(node, dict):
        for v in node.values():
            yield from walk(v)
    elif isinstance(node, list):
        for v in node:
            yield from walk(v)


def test_cfn_lint_reports_nothing_on_base_and_rendered_templates(rendered_dir, reserving_dir):
    files = sorted(str(p) for p in TEMPLATE_DIR.glob("*.yaml")) + sorted(str(p) for p in rendered_dir.glob("*.json"))
    assert len(files) == 2 * len(STACKS)
    files.append(str(reserving_dir / "pipeline.json"))
    result = subprocess.run([CFN_LINT, *files], capture_output=True, text=True)
    assert result.returncode == 0, f"cfn-lint found errors or warnings:\n{result.stdout}{result.stderr}"


def test_cfn_lint_does_fail_on_a_broken_template(tmp_path, templates):
    """The lint test above can fail: an unknown property is reported."""
    broken = json.loads(json.dumps(templates["network"]))
    broken["Resources"]["Vpc"]["Properties"]["NotAProperty"] = True
    path = tmp_path / "broken.json"
    path.write_text(json.dumps(broken))
    result = subprocess.run([CFN_LINT, str(path)], capture_output=True, text=True)
    assert result.returncode != 0 and "NotAProperty" in result.stdout


@pytest.mark.parametrize("where", ["base", "rendered", "reserving"])
def test_checkov_has_no_failed_check_and_every_skip_is_justified(where, rendered_dir, reserving_dir):
    if not CHECKOV.exists():
        pytest.fail(f"checkov is not installed at {CHECKOV}: run `make tools` (the test suite's `make test` does)")
    directory = {"base": TEMPLATE_DIR, "rendered": rendered_dir, "reserving": reserving_dir}[where]
    result = subprocess.run([str(CHECKOV), "-d", str(directory), "--framework", "cloudformation", "--skip-download",
                             "-o", "json"], capture_output=True, text=True, timeout=300)
    report = json.loads(result.stdout)
    summary = report["summary"]
    failed = [f"{c['check_id']} {c['resource']}" for c in report["results"]["failed_checks"]]
    assert summary["failed"] == 0, failed
    assert summary["passed"] > 50
    for check in report["results"]["skipped_checks"]:
        comment = (check.get("check_result") or {}).get("suppress_comment") or ""
        assert len(comment) > 30, f"skip of {check['check_id']} on {check['resource']} has no justification"


def test_database_is_private_encrypted_backed_up_and_protected(templates):
    db = templates["database"]
    (cluster,) = resources(db, "AWS::RDS::DBCluster").values()
    props = cluster["Properties"]
    assert cluster["DeletionPolicy"] == "RetainExceptOnCreate" and cluster["UpdateReplacePolicy"] == "Snapshot"
    assert props["StorageEncrypted"] is True
    # protected unless provisioning asks otherwise, which it does only while the cluster's first create runs
    assert props["DeletionProtection"] == {"Ref": "DeletionProtection"}
    assert db["Parameters"]["DeletionProtection"]["Default"] == "true"
    assert props["EnableIAMDatabaseAuthentication"] is True
    retention = db["Parameters"]["BackupRetentionDays"]
    assert props["BackupRetentionPeriod"] == {"Ref": "BackupRetentionDays"}
    assert retention["Default"] >= 7 and retention["MinValue"] >= 7
    assert props["ManageMasterUserPassword"] is True and "MasterUserPassword" not in props
    for instance in resources(db, "AWS::RDS::DBInstance").values():
        assert instance["Properties"]["PubliclyAccessible"] is False
    (group,) = resources(db, "AWS::RDS::DBClusterParameterGroup").values()
    assert group["Properties"]["Parameters"]["rds.force_ssl"] == "1"


def test_database_admits_5432_only_from_the_lambda_and_proxy_groups(templates):
    db = templates["database"]
    sg_ids = [k for k in resources(db, "AWS::EC2::SecurityGroup")]
    assert sg_ids == ["DatabaseSecurityGroup"]
    assert "SecurityGroupIngress" not in db["Resources"]["DatabaseSecurityGroup"]["Properties"]
    rules = [r["Properties"] for r in resources(db, "AWS::EC2::SecurityGroupIngress").values()
             if r["Properties"]["GroupId"] == {"Ref": "DatabaseSecurityGroup"}]
    assert sorted(r["SourceSecurityGroupId"]["Ref"] for r in rules) == ["LambdaSecurityGroupId", "ProxySecurityGroupId"]
    for rule in rules:
        assert (rule["FromPort"], rule["ToPort"], rule["IpProtocol"]) == (5432, 5432, "tcp")
        assert "CidrIp" not in rule
    assert templates["database"]["Resources"]["Cluster"]["Properties"]["VpcSecurityGroupIds"] == [
        {"Ref": "DatabaseSecurityGroup"}]


def test_no_ingress_from_the_whole_internet_anywhere(templates):
    rules = []
    for template in templates.values():
        for res in template["Resources"].values():
            if res["Type"] == "AWS::EC2::SecurityGroupIngress":
                rules.append(res["Properties"])
            if res["Type"] == "AWS::EC2::SecurityGroup":
                rules.extend(res["Properties"].get("SecurityGroupIngress", []))
    assert rules, "no ingress rules found at all"
    for rule in rules:
        assert rule.get("CidrIp") not in ("0.0.0.0/0",) and rule.get("CidrIpv6") not in ("::/0",), rule
    proxy_rules = [r["Properties"] for r in resources(templates["proxy"], "AWS::EC2::SecurityGroupIngress").values()]
    assert sorted(r["CidrIp"] for r in proxy_rules) == sorted(ALLOW)
    assert all(r["FromPort"] == r["ToPort"] == 5432 for r in proxy_rules)


def test_the_allow_list_refuses_the_internet():
    for bad in ("0.0.0.0/0", "0.0.0.0/1", "10.0.0.0/4", "not-a-cidr"):
        with pytest.raises(PlaybookError):
            validate_cidrs([bad])
    with pytest.raises(PlaybookError):
        validate_cidrs([])
    assert validate_cidrs(["203.0.113.7"]) == ["203.0.113.7/32"]


SECRET_WORDS = ("password", "passwd", "secret_key", "token", "private_key")


def test_no_secret_values_in_environments_parameter_defaults_or_user_data(templates):
    for name, template in templates.items():
        for pname, spec in (template.get("Parameters") or {}).items():
            if any(w in pname.lower() for w in ("password", "secret", "token")):
                assert "Default" not in spec, f"{name}: parameter {pname} has a default"
                assert spec.get("NoEcho") or "Arn" in pname, f"{name}: {pname} must be an ARN or NoEcho"
        for lid, res in template["Resources"].items():
            env = res.get("Properties", {}).get("Environment", {}).get("Variables", {})
            for key, value in env.items():
                assert not any(w in key.lower() for w in SECRET_WORDS), f"{lid}: {key}"
                if key == "ROLE_SECRET_ARNS":  # the migrate function's map of role -> secret ARN
                    assert set(re.findall(r"\$\{(\w+)\}", value["Fn::Sub"])) == {
                        "IngestDatabaseSecretArn", "ReportingDatabaseSecretArn", "MonitorDatabaseSecretArn"}
                elif "SECRET" in key:
                    logins = ("DatabaseSecretArn", "IngestDatabaseSecretArn", "ReportingDatabaseSecretArn")
                    assert key.endswith("_ARN") and value in ({"Ref": p} for p in logins)
            user_data = json.dumps(res.get("Properties", {}).get("UserData", ""))
            assert not any(w in user_data.lower() for w in SECRET_WORDS), f"{lid}: UserData mentions a secret"
    functions = resources(templates["pipeline"], "AWS::Lambda::Function")
    assert functions and all(f["Properties"]["Environment"]["Variables"]["DB_SECRET_ARN"] for f in functions.values())


def test_each_function_logs_in_as_the_least_role_its_job_needs(templates):
    """The owner's secret goes to the migrate function only; ingest and refresh write as the ingest role, the
    email reads as the reporting role."""
    functions = resources(templates["pipeline"], "AWS::Lambda::Function")
    login = {lid: f["Properties"]["Environment"]["Variables"]["DB_SECRET_ARN"]["Ref"] for lid, f in functions.items()}
    assert login.pop("MigrateFunction") == "DatabaseSecretArn"
    assert login.pop("SendExpenseEmailFunction") == "ReportingDatabaseSecretArn"
    assert set(login.values()) == {"IngestDatabaseSecretArn"}
    policies = resources(templates["pipeline"], "AWS::IAM::Role")
    for lid, role in policies.items():
        for policy in role["Properties"].get("Policies", []):
            for statement in policy["PolicyDocument"]["Statement"]:
                if statement.get("Sid") == "ReadDatabaseSecret" and lid != "MigrateRole":
                    assert statement["Resource"] != {"Ref": "DatabaseSecretArn"}, lid


def test_the_migrate_function_gives_every_role_its_login_from_a_secret_it_alone_may_read(templates):
    """Each role's secret is a parameter of the pipeline stack (an ARN: provisioning makes the secret, as
    playbook.warehouse.SECRET_NAMES names it); the migrate function finds each in ROLE_SECRET_ARNS and may read
    each, and no other function reads the monitor role's (the consultant side's login at the proxy)."""
    from playbook.warehouse import SECRET_NAMES

    pipeline = templates["pipeline"]
    parameters = {"pipeline_ingest": "IngestDatabaseSecretArn", "pipeline_reporting": "ReportingDatabaseSecretArn",
                  "pipeline_monitor": "MonitorDatabaseSecretArn"}
    assert set(parameters) == set(SECRET_NAMES) and SECRET_NAMES["pipeline_monitor"] == "playbook/db/monitor"
    for parameter in parameters.values():
        spec = pipeline["Parameters"][parameter]
        assert spec["Type"] == "String" and "Default" not in spec
        assert spec["AllowedPattern"] == "^arn:[a-z-]+:secretsmanager:.+$"
    variables = pipeline["Resources"]["MigrateFunction"]["Properties"]["Environment"]["Variables"]
    role_arns = json.loads(re.sub(r"\$\{(\w+)\}", r"\1", variables["ROLE_SECRET_ARNS"]["Fn::Sub"]))
    assert role_arns == parameters
    (policy,) = pipeline["Resources"]["MigrateRole"]["Properties"]["Policies"]
    (read,) = [st for st in policy["PolicyDocument"]["Statement"] if st["Sid"] == "ReadRoleSecrets"]
    assert read["Action"] == "secretsmanager:GetSecretValue"
    assert sorted(r["Ref"] for r in read["Resource"]) == sorted(parameters.values())
    for lid, role in resources(pipeline, "AWS::IAM::Role").items():
        if lid == "MigrateRole":
            continue
        assert "MonitorDatabaseSecretArn" not in json.dumps(role), lid
    functions = resources(pipeline, "AWS::Lambda::Function")
    assert all("MonitorDatabaseSecretArn" not in json.dumps(f["Properties"]["Environment"]["Variables"])
               for lid, f in functions.items() if lid != "MigrateFunction")


def test_proxy_requires_imdsv2_has_no_ssh_and_renders_the_allow_list(templates):
    (instance,) = resources(templates["proxy"], "AWS::EC2::Instance").values()
    props = instance["Properties"]
    assert props["MetadataOptions"]["HttpTokens"] == "required"
    assert "KeyName" not in props
    conf = proxy_nginx_conf(templates["proxy"])["content"]["Fn::Sub"]
    for cidr in ALLOW:
        assert f"allow {cidr};" in conf
    assert "deny all;" in conf and "${DatabaseEndpoint}:${DatabasePort}" in conf
    assert "@NGINX_CONF@" not in json.dumps(templates["proxy"])
    role = templates["proxy"]["Resources"]["ProxyRole"]["Properties"]
    assert any("AmazonSSMManagedInstanceCore" in json.dumps(a) for a in role["ManagedPolicyArns"])


def test_buckets_block_public_access_and_refuse_plain_http(templates):
    buckets = {}
    for template in templates.values():
        for lid, res in resources(template, "AWS::S3::Bucket").items():
            buckets[lid] = (template, res)
    assert set(buckets) == {"AccessLogsBucket", "ArtifactBucket", "LandingBucket"}
    for lid, (template, res) in buckets.items():
        props = res["Properties"]
        assert props["PublicAccessBlockConfiguration"] == {
            "BlockPublicAcls": True, "BlockPublicPolicy": True, "IgnorePublicAcls": True, "RestrictPublicBuckets": True}
        assert props["VersioningConfiguration"]["Status"] == "Enabled"
        assert props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
        assert props["LifecycleConfiguration"]["Rules"]
        if lid != "AccessLogsBucket":
            assert props["LoggingConfiguration"]["DestinationBucketName"]
        (policy,) = [p for p in resources(template, "AWS::S3::BucketPolicy").values()
                     if p["Properties"]["Bucket"] == {"Ref": lid}]
        deny = [s for s in policy["Properties"]["PolicyDocument"]["Statement"] if s["Effect"] == "Deny"]
        assert any(s["Condition"] == {"Bool": {"aws:SecureTransport": "false"}} and s["Action"] == "s3:*"
                   for s in deny), lid


def test_roles_are_least_privilege(templates):
    pipeline = templates["pipeline"]
    roles = resources(pipeline, "AWS::IAM::Role")
    functions = resources(pipeline, "AWS::Lambda::Function")
    assert {f["Properties"]["Role"]["Fn::GetAtt"][0] for f in functions.values()} == {
        k for k in roles if k != "SchedulerRole"}, "one role per function"
    documents = [p["PolicyDocument"] for r in roles.values() for p in r["Properties"].get("Policies", [])]
    documents += [p["Properties"]["PolicyDocument"] for p in resources(pipeline, "AWS::IAM::ManagedPolicy").values()]
    for doc in documents:
        for statement in doc["Statement"]:
            actions = statement["Action"] if isinstance(statement["Action"], list) else [statement["Action"]]
            assert not any(a == "*" or a.endswith(":*") for a in actions), statement
            targets = statement["Resource"] if isinstance(statement["Resource"], list) else [statement["Resource"]]
            if "*" in targets:
                # IAM has no resource-level permissions for these describe calls; nothing else may say "*"
                assert all(a.startswith("ec2:Describe") for a in actions), statement


def test_pipeline_has_one_function_per_job_with_schedules_in_the_company_timezone(templates):
    config = load_config()
    pipeline = templates["pipeline"]
    functions = {f["Properties"]["FunctionName"]["Fn::Sub"]: f["Properties"]
                 for f in resources(pipeline, "AWS::Lambda::Function").values()}
    expected = {f"${{Prefix}}-ingest-{n.replace('_', '-')}" for n in config.sources} | {
        "${Prefix}-refresh-marts", "${Prefix}-send-expense-email", "${Prefix}-migrate"}
    assert set(functions) == expected
    for name, props in functions.items():
        assert props["Runtime"] in ("python3.12", "python3.13")
        assert "ReservedConcurrentExecutions" not in props and props["DeadLetterConfig"]["TargetArn"]
        assert props["VpcConfig"]["SubnetIds"] == {"Ref": "AppSubnetIds"}
        assert set(props["Environment"]["Variables"]) >= {"DB_SECRET_ARN", "PIPELINE_CONFIG_URI", "LANDING_BUCKET",
                                                          "LOG_LEVEL"}
        if "-ingest-" in name:
            handler = "ingest_api" if name.endswith("trade-invoices") else "ingest_object"
            assert props["MemorySize"] == 512 and props["Handler"] == f"pipeline.handlers.{handler}.handler"
    schedules = {s["Properties"]["Name"]["Fn::Sub"]: s["Properties"]
                 for s in resources(pipeline, "AWS::Scheduler::Schedule").values()}
    assert schedules["${Prefix}-ingest-sales"]["ScheduleExpression"] == config.sources["sales"].schedule
    assert schedules["${Prefix}-send-expense-email"]["ScheduleExpression"] == "cron(0 8 * * ? *)"
    for props in schedules.values():
        assert props["ScheduleExpressionTimezone"] == "Europe/London"
        assert props["Target"]["RetryPolicy"]["MaximumRetryAttempts"] >= 1 and props["Target"]["DeadLetterConfig"]
    notifications = pipeline["Resources"]["LandingBucket"]["Properties"]["NotificationConfiguration"]
    prefixes = {c["Filter"]["S3Key"]["Rules"][0]["Value"] for c in notifications["LambdaConfigurations"]}
    assert prefixes == {s.prefix for s in config.sources.values() if s.kind != "rest_api"}
    alarms = resources(pipeline, "AWS::CloudWatch::Alarm")
    metrics = {a["Properties"]["MetricName"] for a in alarms.values()}
    assert metrics == {"Errors", "Throttles", "Duration", "ApproximateNumberOfMessagesVisible"}
    assert all(a["Properties"]["AlarmActions"] == [{"Ref": "AlarmTopic"}] for a in alarms.values())


def test_a_rest_api_source_gets_the_api_handler_and_no_notification():
    data = load_config().model_dump(mode="json")
    data["sources"]["crm_api"] = {**data["sources"]["interactions"], "kind": "rest_api", "prefix": None, "api": {
        "base_url": "https://api.example.com", "resource": {"path": "/v1/activities"},
        "auth": {"type": "bearer", "secret": "playbook/api/crm"},
        "pagination": {"style": "none"}}}
    from pipeline.config import parse_config

    template = render_pipeline(parse_config(data))
    fn = template["Resources"]["IngestCrmApiFunction"]["Properties"]
    assert fn["Handler"] == "pipeline.handlers.ingest_api.handler"
    assert "IngestCrmApiLandingPermission" not in template["Resources"]
    statements = template["Resources"]["IngestCrmApiRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    (api_secret,) = [s for s in statements if s["Sid"] == "ReadOwnApiSecret"]
    assert api_secret["Resource"]["Fn::Sub"].endswith(":secret:playbook/api/crm-??????")
    assert not [s for s in statements if s["Action"] == "secretsmanager:PutSecretValue"]  # a bearer token: read only
    # a rotating refresh token is written back, to its own secret only
    data["sources"]["crm_api"]["api"]["auth"] = {"type": "oauth2_refresh_token", "secret": "playbook/api/crm",
                                                 "token_url": "https://login.example.com/token"}
    template = render_pipeline(parse_config(data))
    statements = template["Resources"]["IngestCrmApiRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]
    (rotate,) = [s for s in statements if s["Action"] == "secretsmanager:PutSecretValue"]
    assert rotate["Resource"]["Fn::Sub"].endswith(":secret:playbook/api/crm-??????")


def test_network_spans_two_azs_without_hard_coding_them(templates):
    network = templates["network"]
    subnets = resources(network, "AWS::EC2::Subnet")
    assert len(subnets) == 6
    for subnet in subnets.values():
        az = subnet["Properties"]["AvailabilityZone"]
        assert az["Fn::Select"][1] == {"Fn::GetAZs": ""}
    text = json.dumps(network)
    assert "eu-west-2a" not in text and "us-east-1a" not in text
    endpoints = {e["Properties"]["VpcEndpointType"]: e["Properties"]["ServiceName"]["Fn::Sub"]
                 for e in resources(network, "AWS::EC2::VPCEndpoint").values()}
    assert endpoints == {"Gateway": "com.amazonaws.${AWS::Region}.s3",
                         "Interface": "com.amazonaws.${AWS::Region}.secretsmanager"}
    assert network["Parameters"]["NatGatewayMode"]["AllowedValues"] == ["single", "per-az"]


def test_the_email_function_keeps_its_claims_in_its_own_prefix_with_the_least_it_needs(templates):
    """The email function's reports bucket is the artifact bucket (REPORTS_BUCKET), under the prefix its code writes;
    beyond what every function has, it may put there only conditionally (If-None-Match, as it claims a run), get and
    head what is there, delete a claim whose send failed, and send raw email as the configured sender only."""
    from pipeline.expense_email import EMAIL_PREFIX
    from playbook.templates import EMAIL_PREFIX as TEMPLATE_EMAIL_PREFIX

    assert TEMPLATE_EMAIL_PREFIX == EMAIL_PREFIX
    pipeline = templates["pipeline"]
    email = pipeline["Resources"]["SendExpenseEmailFunction"]["Properties"]
    assert email["Environment"]["Variables"]["REPORTS_BUCKET"] == {"Ref": "ArtifactBucket"}
    statements = {s["Sid"]: s for s in
                  pipeline["Resources"]["SendExpenseEmailRole"]["Properties"]["Policies"][0]["PolicyDocument"]["Statement"]}
    emails = {"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/" + EMAIL_PREFIX + "*"}
    s3 = {(s["Action"], json.dumps(s["Resource"], sort_keys=True), json.dumps(s.get("Condition"), sort_keys=True))
          for s in statements.values() if str(s["Action"]).startswith("s3:")}
    assert s3 == {
        ("s3:GetObject", json.dumps({"Fn::Sub": "arn:${AWS::Partition}:s3:::${ArtifactBucket}/config/pipeline.json"}),
         "null"),
        ("s3:PutObject", json.dumps(emails), json.dumps({"Null": {"s3:if-none-match": "false"}})),
        ("s3:GetObject", json.dumps(emails), "null"),
        ("s3:DeleteObject", json.dumps(emails), "null"),
    }
    ses = [s for s in statements.values() if "ses:" in json.dumps(s["Action"])]
    identity = "arn:${AWS::Partition}:ses:${AWS::Region}:${AWS::AccountId}:identity/"
    # the sender's identities, and (SES's sandbox authorises a send against them too) the recipients'
    assert ses == [{"Sid": "SendAsTheReportSender", "Effect": "Allow", "Action": "ses:SendRawEmail",
                    "Resource": [{"Fn::Sub": identity + "${SenderIdentity}"},
                                 {"Fn::Sub": identity + "northwind.example"},
                                 {"Fn::Sub": identity + "operations@northwind.example"}],
                    "Condition": {"StringEquals": {"ses:FromAddress": {"Ref": "SenderIdentity"}}}}]
    # no other function reaches the emails, and none but the email function sends
    for lid, role in resources(pipeline, "AWS::IAM::Role").items():
        if lid == "SendExpenseEmailRole":
            continue
        text = json.dumps(role)
        assert EMAIL_PREFIX not in text and "ses:" not in text, lid


def test_reserved_concurrency_is_a_setting_off_by_default():
    """A fresh account cannot afford the reservations (Lambda keeps 100 executions unreserved): by default no
    function reserves any; with the setting each reserves its own, and the whole is what the quota check asks."""
    config = load_config()
    by_default = resources(render_all(config, ALLOW)["pipeline"], "AWS::Lambda::Function")
    assert by_default
    assert not [lid for lid, f in by_default.items() if "ReservedConcurrentExecutions" in f["Properties"]]
    reserving = resources(render_all(config, ALLOW, reserved_concurrency=True)["pipeline"], "AWS::Lambda::Function")
    reserved = {f["Properties"]["FunctionName"]["Fn::Sub"].removeprefix("${Prefix}-"):
                f["Properties"]["ReservedConcurrentExecutions"] for f in reserving.values()}
    assert reserved == reservations(config) and all(n >= 1 for n in reserved.values())
    assert sum(reserved.values()) == 2 * len(config.sources) + 3


def test_retained_data_is_removed_only_when_its_first_create_rolls_back(templates):
    """The buckets and the cluster outlive their stack, but a rolled-back first create removes them, so a retry
    can create them again under their names; nothing is plainly Retain (that would survive a rollback)."""
    kept = {}
    for template in templates.values():
        for lid, res in template["Resources"].items():
            if "DeletionPolicy" in res:
                kept[lid] = (res["DeletionPolicy"], res.get("UpdateReplacePolicy"))
    assert kept == {"AccessLogsBucket": ("RetainExceptOnCreate", "Retain"),
                    "ArtifactBucket": ("RetainExceptOnCreate", "Retain"),
                    "LandingBucket": ("RetainExceptOnCreate", "Retain"),
                    "Cluster": ("RetainExceptOnCreate", "Snapshot")}
    assert "Retain" not in {policy for policy, _ in kept.values()}
    # a rollback can remove the cluster only while it is unprotected: the parameter provisioning sets
    assert templates["database"]["Parameters"]["DeletionProtection"]["AllowedValues"] == ["true", "false"]


def test_a_new_allow_list_reaches_nginx_through_cfn_init_without_touching_the_instance():
    """nginx's file is the instance's cfn-init metadata, which cfn-hup applies on every stack update: a changed
    allow-list changes that file's content (and the security group), and no property of the instance (a
    UserData change would only stop and start it, without running it again)."""
    before, after = render_proxy(["203.0.113.10/32"]), render_proxy(["203.0.113.10/32", "192.0.2.0/24"])
    conf_before, conf_after = (proxy_nginx_conf(t)["content"]["Fn::Sub"] for t in (before, after))
    assert "allow 192.0.2.0/24;" not in conf_before and "allow 192.0.2.0/24;" in conf_after
    assert conf_after == render_nginx_conf(
        listen="5432", upstream="${DatabaseEndpoint}:${DatabasePort}", allow=["203.0.113.10/32", "192.0.2.0/24"],
        stream_module="/usr/lib64/nginx/modules/ngx_stream_module.so", pid_file="/run/nginx.pid",
        error_log="/var/log/nginx/error.log", access_log="/var/log/nginx/bi-proxy.log",
        resolver="resolver 169.254.169.253 valid=10s;"), "the same file the local proxy runs"
    instance_before, instance_after = (t["Resources"]["ProxyHost"] for t in (before, after))
    assert instance_before["Properties"] == instance_after["Properties"]
    assert sorted(r["Properties"]["CidrIp"] for r in resources(after, "AWS::EC2::SecurityGroupIngress").values()) == [
        "192.0.2.0/24", "203.0.113.10/32"]
    # cfn-hup watches exactly that metadata and runs cfn-init on it again, which checks and reloads nginx
    init = instance_after["Metadata"]["AWS::CloudFormation::Init"]
    assert init["configSets"]["proxy"] == ["nginx", "cfn-hup"]
    hook = init["cfn-hup"]["files"]["/etc/cfn/hooks.d/proxy-configuration.conf"]["content"]["Fn::Sub"]
    assert "path=Resources.ProxyHost.Metadata.AWS::CloudFormation::Init" in hook
    assert "triggers=post.update" in hook and "--resource ProxyHost --configsets proxy" in hook
    assert "interval=1" in init["cfn-hup"]["files"]["/etc/cfn/cfn-hup.conf"]["content"]["Fn::Sub"]
    assert init["nginx"]["commands"]["01-check-the-configuration"]["command"] == "nginx -t"
    assert init["nginx"]["commands"]["02-reload-a-running-nginx"]["command"] == "systemctl reload nginx"
    assert init["cfn-hup"]["services"]["systemd"]["cfn-hup"]["ensureRunning"] is True
    # the first boot runs the same configset and tells CloudFormation how it went
    user_data = instance_after["Properties"]["UserData"]["Fn::Base64"]["Fn::Sub"]
    assert "cfn-init -v --stack ${AWS::StackName} --resource ProxyHost --configsets proxy" in user_data
    assert "cfn-signal -e $?" in user_data and instance_after["CreationPolicy"]["ResourceSignal"]["Count"] == 1
    assert "allow " not in user_data


def test_the_proxy_ami_is_a_plain_parameter_resolved_by_provisioning(templates):
    """No SSM-typed parameter (CloudFormation would resolve it on every update, and a new AMI release would
    replace the proxy): an AMI id that provisioning resolves once and then passes unchanged."""
    image = templates["proxy"]["Parameters"]["ImageId"]
    assert image["Type"] == "AWS::EC2::Image::Id" and "Default" not in image
    for template in templates.values():
        assert not [p for p in template.get("Parameters", {}).values() if p["Type"].startswith("AWS::SSM::")]


def test_the_alarm_topic_uses_a_key_cloudwatch_may_use_and_mails_the_configured_address(templates):
    pipeline = templates["pipeline"]
    topic = pipeline["Resources"]["AlarmTopic"]["Properties"]
    assert topic["KmsMasterKeyId"] == {"Ref": "AlarmTopicKey"}, "alias/aws/sns cannot be used by CloudWatch"
    key = pipeline["Resources"]["AlarmTopicKey"]["Properties"]
    assert key["EnableKeyRotation"] is True
    (cloudwatch,) = [s for s in key["KeyPolicy"]["Statement"]
                     if s["Principal"] == {"Service": "cloudwatch.amazonaws.com"}]
    assert cloudwatch["Effect"] == "Allow" and set(cloudwatch["Action"]) == {"kms:Decrypt", "kms:GenerateDataKey*"}
    subscription = pipeline["Resources"]["AlarmEmailSubscription"]
    assert subscription["Condition"] == "HasAlarmEmail"
    assert subscription["Properties"] == {"TopicArn": {"Ref": "AlarmTopic"}, "Protocol": "email",
                                          "Endpoint": {"Ref": "AlarmEmail"}}
    assert pipeline["Conditions"]["HasAlarmEmail"] == {"Fn::Not": [{"Fn::Equals": [{"Ref": "AlarmEmail"}, ""]}]}
    assert pipeline["Parameters"]["AlarmEmail"]["Default"] == ""
    pattern = re.compile(pipeline["Parameters"]["AlarmEmail"]["AllowedPattern"])
    assert pattern.match("") and pattern.match("ops@northwind.example") and not pattern.match("not an address")


def test_the_functions_verify_the_cluster_with_the_rds_ca_bundle(templates):
    """On AWS the functions connect with verify-full against the RDS CA bundle, a data file of the function zip
    (under lambda_src/, so on Lambda under /var/task/) that libpq finds through PGSSLROOTCERT."""
    from playbook.targets import AwsTarget, LocalTarget

    pipeline = templates["pipeline"]
    assert pipeline["Parameters"]["DatabaseSslRootCert"]["Default"] == RDS_CA_BUNDLE_ON_LAMBDA
    assert (AwsTarget.database_ssl_mode, AwsTarget.database_ssl_root_cert) == ("verify-full", RDS_CA_BUNDLE_ON_LAMBDA)
    # locally the secret's URL names the TLS front and the stack's CA (playbook.local.tls)
    assert (LocalTarget.database_ssl_mode, LocalTarget.database_ssl_root_cert) == ("verify-full", "")
    assert RDS_CA_BUNDLE_FILE == PROJECT_ROOT / "lambda_src" / RDS_CA_BUNDLE
    for function in resources(pipeline, "AWS::Lambda::Function").values():
        env = function["Properties"]["Environment"]["Variables"]
        assert env["PGSSLROOTCERT"] == {"Ref": "DatabaseSslRootCert"}
        assert env["DB_SSLMODE"] == {"Ref": "DatabaseSslMode"}


def test_the_engine_version_is_a_parameter_of_the_major_the_parameter_group_is_for(templates):
    db = templates["database"]
    version = db["Parameters"]["EngineVersion"]
    assert db["Resources"]["Cluster"]["Properties"]["EngineVersion"] == {"Ref": "EngineVersion"}
    assert re.match(version["AllowedPattern"], version["Default"]) and not re.match(version["AllowedPattern"], "17.2")
    assert db["Resources"]["ClusterParameterGroup"]["Properties"]["Family"] == "aurora-postgresql16"


def test_the_functions_reach_each_rest_sources_port_and_https():
    """Egress is HTTPS (AWS's APIs) plus each REST source's base_url port, derived from the configuration."""
    from pipeline.config import parse_config

    def egress(base_urls: list[str]) -> list[tuple[int, str]]:
        data = load_config().model_dump(mode="json")
        for i, url in enumerate(base_urls):
            data["sources"][f"api_{i}"] = {**data["sources"]["interactions"], "kind": "rest_api", "prefix": None,
                                          "api": {"base_url": url, "resource": {"path": "/v1/x"},
                                                  "auth": {"type": "none"}, "pagination": {"style": "none"}}}
        network = render_all(parse_config(data), ALLOW)["network"]
        rules = network["Resources"]["LambdaSecurityGroup"]["Properties"]["SecurityGroupEgress"]
        return sorted((r["FromPort"], r["CidrIp"]["Ref"] if isinstance(r["CidrIp"], dict) else r["CidrIp"])
                      for r in rules if r["FromPort"] == r["ToPort"])

    assert egress([]) == [(443, "0.0.0.0/0"), (5432, "VpcCidr")]
    assert egress(["https://erp.example.com"]) == [(443, "0.0.0.0/0"), (5432, "VpcCidr")]
    assert egress(["http://127.0.0.1:8765"]) == [(443, "0.0.0.0/0"), (5432, "VpcCidr")]  # this machine's
    assert egress(["https://erp.example.com:8443/api", "http://legacy.example.com"]) == [
        (80, "0.0.0.0/0"), (443, "0.0.0.0/0"), (5432, "VpcCidr"), (8443, "0.0.0.0/0")]
