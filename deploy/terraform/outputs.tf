output "service_address" {
  description = "Floating IP of the service (point the hospital's DNS name at it)."
  value       = openstack_networking_floatingip_v2.service.address
}

output "service_private_ips" {
  description = "Private addresses of the service instances (load balancer members)."
  value       = openstack_compute_instance_v2.service[*].access_ip_v4
}

output "trainer_private_ips" {
  description = "Private addresses of the GPU training nodes (Ray workers)."
  value       = openstack_compute_instance_v2.trainer[*].access_ip_v4
}

output "object_containers" {
  description = "Object storage containers: data sets and images, MLflow artifacts."
  value       = [openstack_objectstorage_container_v1.data.name, openstack_objectstorage_container_v1.mlflow.name]
}
