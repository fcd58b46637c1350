locals {
  name = "care-${var.environment}"
  tags = ["care-companion", var.environment]
}

resource "openstack_networking_network_v2" "care" {
  name           = local.name
  admin_state_up = true
}

resource "openstack_networking_subnet_v2" "care" {
  name            = local.name
  network_id      = openstack_networking_network_v2.care.id
  cidr            = "192.168.50.0/24"
  ip_version      = 4
  dns_nameservers = []
}

data "openstack_networking_network_v2" "external" {
  name = var.external_network
}

resource "openstack_networking_router_v2" "care" {
  name                = local.name
  external_network_id = data.openstack_networking_network_v2.external.id
}

resource "openstack_networking_router_interface_v2" "care" {
  router_id = openstack_networking_router_v2.care.id
  subnet_id = openstack_networking_subnet_v2.care.id
}

# HTTPS and DICOM from the hospital network only; SSH from the same network for operators.
resource "openstack_networking_secgroup_v2" "service" {
  name        = "${local.name}-service"
  description = "Care Companion service: HTTPS and DICOM from the hospital network"
}

resource "openstack_networking_secgroup_rule_v2" "https" {
  security_group_id = openstack_networking_secgroup_v2.service.id
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 443
  port_range_max    = 443
  remote_ip_prefix  = var.hospital_cidr
}

resource "openstack_networking_secgroup_rule_v2" "dicom" {
  security_group_id = openstack_networking_secgroup_v2.service.id
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 11112
  port_range_max    = 11112
  remote_ip_prefix  = var.hospital_cidr
}

resource "openstack_networking_secgroup_rule_v2" "ssh" {
  security_group_id = openstack_networking_secgroup_v2.service.id
  direction         = "ingress"
  ethertype         = "IPv4"
  protocol          = "tcp"
  port_range_min    = 22
  port_range_max    = 22
  remote_ip_prefix  = var.hospital_cidr
}

resource "openstack_compute_instance_v2" "service" {
  count           = var.service_count
  name            = "${local.name}-service-${count.index}"
  image_name      = var.image_name
  flavor_name     = var.service_flavor
  key_pair        = var.ssh_key_name
  security_groups = [openstack_networking_secgroup_v2.service.name]
  tags            = local.tags
  user_data       = templatefile("${path.module}/cloud-init.yaml", { environment = var.environment })

  network {
    uuid = openstack_networking_network_v2.care.id
  }

  depends_on = [openstack_networking_router_interface_v2.care]
}

resource "openstack_compute_instance_v2" "trainer" {
  count           = var.gpu_count
  name            = "${local.name}-trainer-${count.index}"
  image_name      = var.image_name
  flavor_name     = var.gpu_flavor
  key_pair        = var.ssh_key_name
  security_groups = [openstack_networking_secgroup_v2.service.name]
  tags            = concat(local.tags, ["gpu"])

  network {
    uuid = openstack_networking_network_v2.care.id
  }

  depends_on = [openstack_networking_router_interface_v2.care]
}

resource "openstack_blockstorage_volume_v3" "data" {
  name        = "${local.name}-data"
  size        = var.volume_size_gb
  description = "DICOM spool and records backups of ${local.name}"
}

resource "openstack_compute_volume_attach_v2" "data" {
  instance_id = openstack_compute_instance_v2.service[0].id
  volume_id   = openstack_blockstorage_volume_v3.data.id
}

resource "openstack_objectstorage_container_v1" "data" {
  name = "${local.name}-data"
}

resource "openstack_objectstorage_container_v1" "mlflow" {
  name = "${local.name}-mlflow"
}

resource "openstack_networking_floatingip_v2" "service" {
  pool = var.external_network
}

resource "openstack_networking_floatingip_associate_v2" "service" {
  floating_ip = openstack_networking_floatingip_v2.service.address
  port_id     = openstack_compute_instance_v2.service[0].network[0].port
}
