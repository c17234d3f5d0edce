// The user-assigned managed identity the app runs as: it reaches storage, Key Vault and
// Application Insights by role, never by key. User-assigned, so the roles can be granted
// before the app exists and survive the app being recreated.

@description('Name of the identity.')
param name string

param location string
param tags object = {}

resource identity 'Microsoft.ManagedIdentity/userAssignedIdentities@2023-01-31' = {
  name: name
  location: location
  tags: tags
}

output id string = identity.id
output clientId string = identity.properties.clientId
output principalId string = identity.properties.principalId
