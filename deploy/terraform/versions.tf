# Care Companion on an OpenStack cloud (the proposal's): instances for the service, a GPU node for training,
# a volume for the DICOM spool and records, object storage containers, security groups and a floating IP.
#   terraform init && terraform plan -var-file=production.tfvars
# Checked in `make test` by `terraform fmt -check` (where a terraform binary exists) and checkov.
terraform {
  required_version = ">= 1.5"
  required_providers {
    openstack = {
      source  = "terraform-provider-openstack/openstack"
      version = "~> 2.1"
    }
  }
}

provider "openstack" {
  cloud = var.cloud
}
