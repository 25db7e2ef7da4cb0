"""The tests' own view of the EC2 API (moto's server): tests/ec2.rs runs this with the moto
venv's Python (boto3 comes with moto) to set up a region and to look at or change instances
behind duffy's back. One JSON document on stdout per command.

  aws.py ENDPOINT REGION setup CIDR            VPC + subnet (CIDR) + security group + key pair
                                               "duffy" + 3 AMIs (x86_64, arm64)
  aws.py ENDPOINT REGION instances             every instance: id, state, type, image, tags,
                                               private/public address
  aws.py ENDPOINT REGION run SUBNET AMI K=V…   one instance tagged K=V…, behind duffy's back
  aws.py ENDPOINT REGION terminate ID…
"""
import json
import sys

import boto3


def client(endpoint, region):
    return boto3.client(
        "ec2",
        endpoint_url=endpoint,
        region_name=region,
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )


def setup(ec2, cidr):
    vpc = ec2.create_vpc(CidrBlock=cidr)["Vpc"]["VpcId"]
    subnet = ec2.create_subnet(VpcId=vpc, CidrBlock=cidr)["Subnet"]["SubnetId"]
    sg = ec2.create_security_group(GroupName="duffy-nodes", Description="duffy", VpcId=vpc)["GroupId"]
    ec2.create_key_pair(KeyName="duffy")
    amis = {}
    for name, arch in [("centos-9s-x86_64", "x86_64"), ("centos-10s-x86_64", "x86_64"),
                       ("centos-9s-aarch64", "arm64"), ("centos-10s-aarch64", "arm64")]:
        amis[name] = ec2.register_image(Name=name, Architecture=arch, RootDeviceName="/dev/sda1")["ImageId"]
    return {"vpc": vpc, "subnet": subnet, "security_group": sg, "amis": amis}


def instances(ec2):
    out = []
    for r in ec2.describe_instances()["Reservations"]:
        for i in r["Instances"]:
            out.append({
                "id": i["InstanceId"],
                "state": i["State"]["Name"],
                "type": i["InstanceType"],
                "image": i["ImageId"],
                "subnet": i.get("SubnetId"),
                "private_ip": i.get("PrivateIpAddress"),
                "public_ip": i.get("PublicIpAddress"),
                "tags": {t["Key"]: t["Value"] for t in i.get("Tags", [])},
            })
    return out


def main():
    endpoint, region, cmd, *args = sys.argv[1:]
    ec2 = client(endpoint, region)
    if cmd == "setup":
        out = setup(ec2, args[0])
    elif cmd == "instances":
        out = instances(ec2)
    elif cmd == "run":
        subnet, ami, *tags = args
        tags = [dict(zip(("Key", "Value"), t.split("=", 1))) for t in tags]
        r = ec2.run_instances(ImageId=ami, InstanceType="t2.micro", MinCount=1, MaxCount=1, SubnetId=subnet,
                              TagSpecifications=[{"ResourceType": "instance", "Tags": tags}])
        out = r["Instances"][0]["InstanceId"]
    elif cmd == "terminate":
        ec2.terminate_instances(InstanceIds=args)
        out = args
    else:
        sys.exit(f"aws.py: unknown command {cmd}")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
