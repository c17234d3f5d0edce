// What the app's identity may do: the least built-in roles that cover every call of the
// code and of the Functions host, each on the one resource it concerns. docs/deploy.md
// ("Roles") says which call needs which role; tests/tests/deploy_bicep.rs derives the
// needed roles from the code and checks these lists against them, both ways.

@description('Principal (object) id of the app\'s user-assigned identity.')
param principalId string

param storageAccountName string
param keyVaultName string
param insightsName string

// Built-in role definition ids (the same in every cloud).
var roleIds = {
  storageBlobDataOwner: 'b7e6dc6d-f1e8-4753-8033-0f276bb0955b'
  storageQueueDataContributor: '974c5e8b-45b9-4653-ba55-5f855dd0fb88'
  storageTableDataContributor: '0a9a7e1f-b9d0-4cc4-a60d-0319b160aaa3'
  keyVaultSecretsOfficer: 'b86a8fe4-44ce-4948-aee5-eccb2c155cd7'
  keyVaultCryptoOfficer: '14b46e9e-c2b7-41b4-b07b-48a6ebf60603'
  keyVaultCertificatesOfficer: 'a4417e6f-fecd-4de8-b567-7b0420556985'
  monitoringMetricsPublisher: '3913510d-42f4-4e42-8a64-420c390055eb'
}

var storageRoles = [
  roleIds.storageBlobDataOwner // the host's state, timer locks and the deployment package
  roleIds.storageQueueDataContributor // queue triggers and outputs, the handler's own queue writes
  roleIds.storageTableDataContributor // every table the handler keeps
]

var keyVaultRoles = [
  roleIds.keyVaultSecretsOfficer // reads the app's client secret and the SMTP password; writes and deletes HR refresh tokens, HR client secrets and webhook signing secrets, and recovers a deleted one set again
  roleIds.keyVaultCryptoOfficer // creates CA keys, reads public keys, signs digests
  roleIds.keyVaultCertificatesOfficer // creates and reads the app's credential certificates
]

var insightsRoles = [
  roleIds.monitoringMetricsPublisher // telemetry with Entra authentication (local auth is off)
]

resource storage 'Microsoft.Storage/storageAccounts@2023-05-01' existing = {
  name: storageAccountName
}

resource vault 'Microsoft.KeyVault/vaults@2023-07-01' existing = {
  name: keyVaultName
}

resource insights 'Microsoft.Insights/components@2020-02-02' existing = {
  name: insightsName
}

resource storageAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in storageRoles: {
    name: guid(storage.id, principalId, role)
    scope: storage
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource keyVaultAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in keyVaultRoles: {
    name: guid(vault.id, principalId, role)
    scope: vault
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]

resource insightsAssignments 'Microsoft.Authorization/roleAssignments@2022-04-01' = [
  for role in insightsRoles: {
    name: guid(insights.id, principalId, role)
    scope: insights
    properties: {
      roleDefinitionId: subscriptionResourceId('Microsoft.Authorization/roleDefinitions', role)
      principalId: principalId
      principalType: 'ServicePrincipal'
    }
  }
]
